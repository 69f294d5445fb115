"""dicom-fastsend: a high-throughput DICOM C-STORE sender."""

from __future__ import annotations

__version__ = "0.1.0"
