"""Values made JSON-safe, one way for every writer (training state, attack configs, generation settings).

Numbers, strings, booleans and None pass; tensors and numpy scalars become numbers (or lists); non-finite floats
become strings ("nan", "inf": JSON has no such numbers); dicts and sequences are converted inside; anything
else (paths, dtypes, objects) becomes its str().
"""

from __future__ import annotations

import math
from typing import Any

PLAIN = (str, int, float, bool, type(None))


def to_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "tolist") and callable(x.tolist):  # torch tensors and numpy arrays / scalars
        return to_jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x if isinstance(x, PLAIN) else str(x)


def is_jsonable(x: Any) -> bool:
    """True for values JSON keeps as they are: plain scalars and (nested) lists/tuples of them."""
    return isinstance(x, PLAIN) or (isinstance(x, (list, tuple)) and all(is_jsonable(v) for v in x))
