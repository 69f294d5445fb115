"""What the user sees: one line per notable file, and the closing summary."""

from __future__ import annotations

import sys
from typing import TextIO

from .sender import FileResult, Outcome, SendSummary


class ConsoleReporter:
    """Prints failures, warnings and skips as they happen; every file with ``verbose``."""

    def __init__(self, verbose: bool, stream: TextIO = sys.stderr) -> None:
        self.verbose = verbose
        self.stream = stream

    def __call__(self, result: FileResult) -> None:
        if result.outcome is Outcome.STORED:
            if self.verbose:
                print(
                    f"stored {result.path} ({result.sop_instance_uid}) "
                    f"in {result.seconds * 1000:.1f} ms",
                    file=self.stream,
                )
        elif result.outcome is Outcome.WARNING:
            print(f"WARNING {result.path}: {result.reason}", file=self.stream)
        elif result.outcome is Outcome.SKIPPED:
            print(f"SKIPPED {result.reason}", file=self.stream)
        elif self.verbose or "not sent: " not in result.reason:
            # Files not sent because no association could be made share one
            # message, printed once by summarize(); the rest are printed here.
            print(f"FAILED {result.reason}", file=self.stream)


def summarize(summary: SendSummary, stream: TextIO = sys.stderr) -> None:
    for message in dict.fromkeys(summary.association_errors):
        print(f"ERROR {message}", file=stream)
    elapsed = max(summary.finished - summary.started, 1e-9)
    sent = sum(r.bytes_sent for r in summary.results)
    stored = summary.count(Outcome.STORED)
    warned = summary.count(Outcome.WARNING)
    files_per_second = (stored + warned) / elapsed
    print(
        f"{len(summary.results)} files: {stored} stored, {warned} stored with warning, "
        f"{summary.count(Outcome.FAILED)} failed, {summary.count(Outcome.SKIPPED)} skipped; "
        f"{sent / 1e6:.1f} MB in {elapsed:.2f} s "
        f"({files_per_second:.1f} files/s, {sent / 1e6 / elapsed:.1f} MB/s); "
        f"associations: {summary.associations_opened} opened, "
        f"{summary.associations_failed} failed, {summary.associations_aborted} aborted",
        file=stream,
    )
