"""The DICOM Upper Layer protocol (PS3.8), sans-IO: PDUs and the association state machine."""
