"""Drive a migration from Python: check the destination, look at the archive, send, report.

    python examples/migrate.py /mnt/archive NEWPACS pacs.example.org 104

Resumable: rerun it and what the journal (in ./logs) says was stored is skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dicom_fastsend as fs


def main() -> int:
    archive, ae_title, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    peer = fs.PeerConfig(host=host, port=port, called_ae_title=ae_title)

    answer = fs.echo(peer)
    if not answer.ok:
        print(f"{ae_title} does not answer C-ECHO: {answer.problem or answer.status}")
        return 3

    config = fs.SendConfig(peer=peer, inputs=(Path(archive),), recursive=True, processes=4)
    report = fs.scan(config)
    print(f"{report.files} files in {report.studies} studies, {report.total_bytes / 1e9:.1f} GB")

    def show(result: fs.FileResult) -> None:
        if result.outcome is fs.Outcome.FAILED:
            print(f"FAILED {result.path}: {result.reason}")

    summary = fs.send(config, on_result=show)
    print(
        f"stored {summary.count(fs.Outcome.STORED)}, warnings {summary.count(fs.Outcome.WARNING)},"
        f" failed {summary.count(fs.Outcome.FAILED)}, skipped {summary.count(fs.Outcome.SKIPPED)};"
        f" C-STORE p95 {summary.latency_ms()['p95']:.1f} ms"
    )
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
