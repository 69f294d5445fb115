"""The DICOM protocol, sans-IO: UIDs, PDUs (PS3.8), the association state machine,
DIMSE messages and statuses (PS3.7), presentation contexts, and the hot path that
frames them. Nothing here touches a socket or a file."""
