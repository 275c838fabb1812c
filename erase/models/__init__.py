"""Model families (recognition, loading) and tiny offline pipelines of every family for tests."""

from erase.models.families import (
    FAMILIES,
    FAMILY_NAMES,
    FamilySpec,
    ModelLoadError,
    detect_family,
    family_of,
    get_family,
    load_pipeline,
    require_components,
)
from erase.models.tiny import (
    TINY_CALL_KWARGS,
    save_tiny_pipeline,
    tiny_call_inputs,
    tiny_image,
    tiny_mask,
    tiny_pipeline,
)

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "FamilySpec",
    "ModelLoadError",
    "TINY_CALL_KWARGS",
    "detect_family",
    "family_of",
    "get_family",
    "load_pipeline",
    "require_components",
    "save_tiny_pipeline",
    "tiny_call_inputs",
    "tiny_image",
    "tiny_mask",
    "tiny_pipeline",
]
