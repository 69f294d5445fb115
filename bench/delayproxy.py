"""The benchmark's delay proxy, kept here for the command line; it lives in the package.

Usage: python bench/delayproxy.py --listen 11113 --to 127.0.0.1:11112 --delay 0.01
(the same as python -m dicom_fastsend.delayproxy).
"""

from __future__ import annotations

from dicom_fastsend.delayproxy import main, start_in_thread

__all__ = ["main", "start_in_thread"]

if __name__ == "__main__":
    main()
