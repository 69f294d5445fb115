"""UIDs that the sender needs by name (PS3.6 Annex A, PS3.5 Section 10)."""

from __future__ import annotations

# PS3.7 Annex A.2.1: the only DICOM application context name.
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

# The two uncompressed little-endian syntaxes that every SCP must be able to
# take (PS3.5 10.1) and that fastsend converts between on the fly.
UNCOMPRESSED_LITTLE_ENDIAN = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)

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
    try:
        from pydicom.uid import UID

        name = str(UID(uid).name)
    except Exception:  # pragma: no cover - pydicom's dictionary is optional here
        return uid
    return name if name and name != uid else uid


def describe(uid: str) -> str:
    """'CT Image Storage (1.2.840.10008.5.1.4.1.1.2)' for messages and logs."""
    name = uid_name(uid)
    return uid if name == uid else f"{name} ({uid})"
