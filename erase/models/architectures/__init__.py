"""One class per denoiser architecture, each in its own file; `FamilySpec.adapter` (or, when unset,
`FamilySpec.architecture`) names the one a family uses. A new architecture is a new file here plus one entry
in `ARCHITECTURES`."""

from __future__ import annotations

from erase.models.architectures.base import Architecture
from erase.models.architectures.flux import FluxArchitecture
from erase.models.architectures.sd3 import SD3Architecture
from erase.models.architectures.sdxl import SDXLArchitecture
from erase.models.architectures.unet import UNetArchitecture
from erase.models.families import FamilySpec, ModelLoadError

ARCHITECTURES: dict[str, type[Architecture]] = {
    a.name: a for a in (UNetArchitecture, SDXLArchitecture, SD3Architecture, FluxArchitecture)
}


def architecture_class(spec: FamilySpec) -> type[Architecture]:
    """The Architecture class that drives `spec`'s denoiser."""
    key = spec.adapter or spec.architecture
    try:
        return ARCHITECTURES[key]
    except KeyError:
        raise ModelLoadError(
            f"family {spec.name!r} names architecture {key!r}, which has no adapter class; known: {', '.join(ARCHITECTURES)}"
        ) from None


__all__ = ["ARCHITECTURES", "Architecture", "FluxArchitecture", "SD3Architecture", "SDXLArchitecture",
           "UNetArchitecture", "architecture_class"]
