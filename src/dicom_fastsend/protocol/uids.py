"""UIDs that the sender needs by name (PS3.6 Annex A, PS3.5 Section 10)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

# PS3.7 Annex A.2.1: the only DICOM application context name.
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

# The two uncompressed little-endian syntaxes, which fastsend converts between
# on the fly. Implicit VR LE is the default that every SCP must accept
# (PS3.5 10.1), so one of these is the fallback for every file.
UNCOMPRESSED_LITTLE_ENDIAN = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
# Syntaxes whose data sets convert.convert_dataset re-encodes element by
# element into one of those two, without decoding the file: they, and
# Explicit VR Big Endian (PS3.5 A.3, retired), whose binary values are
# byte-swapped (PS3.5 7.3). Compressed and deflated data sets are decoded.
CONVERTS_ON_THE_FLY = (*UNCOMPRESSED_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN)

# Root of fastsend's implementation class UID (PS3.7 D.3.3.2); the version is
# appended so peers' logs tell releases apart.
IMPLEMENTATION_CLASS_UID_ROOT = "1.2.826.0.1.3680043.10.1447"
MEDIA_STORAGE_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"  # DICOMDIR (PS3.10)

TRANSFER_SYNTAX_NAMES: dict[str, str] = {
    IMPLICIT_VR_LITTLE_ENDIAN: "Implicit VR Little Endian",
    EXPLICIT_VR_LITTLE_ENDIAN: "Explicit VR Little Endian",
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: "Deflated Explicit VR Little Endian",
    EXPLICIT_VR_BIG_ENDIAN: "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless, First-Order Prediction",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless Only",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


def uid_name(uid: str) -> str:
    """A human name for a transfer syntax or SOP class UID, or the UID itself."""
    if uid in TRANSFER_SYNTAX_NAMES:
        return TRANSFER_SYNTAX_NAMES[uid]
    entry = _uid_dictionary().get(uid)
    return str(entry[0]) if entry and entry[0] else uid


@functools.cache
def _uid_dictionary() -> dict[str, tuple[str, ...]]:
    """pydicom's table of UIDs (PS3.6 Annex A), loaded without importing pydicom.

    ``import pydicom`` takes about 0.4 s (its pixel handlers load numpy and
    more); a sender that names a SOP class in its last summary line would pay
    that on every run. The table is a plain dict literal in one file, which
    loads on its own in about a millisecond.
    """
    try:
        spec = importlib.util.find_spec("pydicom")
        locations = list(spec.submodule_search_locations or ()) if spec else []
        source = importlib.util.spec_from_file_location(
            "_fastsend_uid_dict", Path(locations[0]) / "_uid_dict.py"
        )
        assert source is not None and source.loader is not None
        module = importlib.util.module_from_spec(source)
        source.loader.exec_module(module)
        table: dict[str, tuple[str, ...]] = module.UID_dictionary
        return table
    except Exception:  # pragma: no cover - a pydicom without the file: UIDs stay UIDs
        return {}


def describe(uid: str) -> str:
    """'CT Image Storage (1.2.840.10008.5.1.4.1.1.2)' for messages and logs."""
    name = uid_name(uid)
    return uid if name == uid else f"{name} ({uid})"
