"""`python -m dicom_fastsend` is the `fastsend` command."""

from dicom_fastsend.cli import run

run()
