"""The caption stage's labelled evaluation set (see profiler/EVAL_SET.md).

One human-written reference caption per bundled photo (``inputs.BUNDLED_PHOTOS``),
written for this project by looking at the photo. A mirrored photo shares its
original's caption. Plain data; no I/O.
"""

from __future__ import annotations

__all__ = ["REFERENCE_CAPTIONS", "references_for"]

REFERENCE_CAPTIONS: dict[str, tuple[str, ...]] = {
    "astronaut": ("A smiling woman astronaut in an orange space suit holds her helmet in front of an "
                  "American flag and a space shuttle model.",),
    "chelsea": ("A close-up of a tabby cat with green eyes.",),
    "coffee": ("A cup of coffee on a red saucer with a spoon on a wooden table.",),
    "rocket": ("A rocket stands on its launch pad at night between lit towers.",),
    "stereo_motorcycle": ("A red motorcycle parked in a garage workshop.",),
    "camera": ("A man in a dark coat looks through a camera on a tripod in a field.",),
    "coins": ("Rows of old silver coins laid out on a dark background.",),
}


def references_for(request_id: str) -> tuple[str, ...]:
    """Reference captions of a bundled photo by its request id (``name`` or ``name-mirrored``)."""
    return REFERENCE_CAPTIONS.get(request_id.removesuffix("-mirrored"), ())
