"""dicom-fastsend: a high-throughput DICOM C-STORE sender.

The Python API takes the same configuration objects as the `fastsend` command::

    from pathlib import Path
    import dicom_fastsend as fs

    peer = fs.PeerConfig(host="pacs.example.org", port=104, called_ae_title="NEWPACS")
    summary = fs.send(fs.SendConfig(peer=peer, inputs=(Path("/mnt/archive"),), recursive=True,
                                    processes=4))
    print(summary.count(fs.Outcome.STORED), summary.exit_code)
"""

from __future__ import annotations

# Defined before the imports below: submodules read it while they load.
__version__ = "0.1.0"

from collections.abc import Callable  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import msgspec  # noqa: E402

from .config import PeerConfig, SendConfig, TLSConfig  # noqa: E402
from .engine.results import FileResult, Outcome, SendSummary, WorkerStats  # noqa: E402

if TYPE_CHECKING:
    from .survey import ScanReport


def __getattr__(name: str) -> Any:
    # ScanReport lives in survey.py, with the coordinator; importing that for every
    # `import dicom_fastsend` (fastsend -V, a worker) would cost ~0.1 s.
    if name == "ScanReport":
        from .survey import ScanReport

        return ScanReport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EchoResult",
    "FileResult",
    "Outcome",
    "PeerConfig",
    "ScanReport",
    "SendConfig",
    "SendSummary",
    "TLSConfig",
    "WorkerStats",
    "echo",
    "scan",
    "send",
    "__version__",
]


def send(config: SendConfig, on_result: Callable[[FileResult], None] | None = None) -> SendSummary:
    """Send everything under ``config.inputs``, as `fastsend send` does.

    Never raises for a bad file or peer: every input ends in the summary as
    stored, warning, failed or skipped. Writes the session log, JSON summary,
    failures CSV and journal under ``config.log_dir`` (``None``: none of them).
    ``on_result`` is called in this process for each file as its outcome
    arrives. Ctrl-C (SIGINT) is handled as by the command when called from the
    main thread.
    """
    from .sender import send as run

    return run(config, on_result or (lambda result: None))


def scan(config: SendConfig) -> ScanReport:
    """What `send` would send: files, studies, SOP classes, syntaxes, bytes; no peer."""
    from .survey import scan as run

    return run(config)


class EchoResult(msgspec.Struct, frozen=True):
    """The C-ECHO outcome: the peer's status, or why there was no answer."""

    status: int | None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0x0000


def echo(peer: PeerConfig) -> EchoResult:
    """C-ECHO (verification) against ``peer``."""
    from .sender import echo as run

    response, problem = run(peer)
    return EchoResult(None if response is None else response.status, problem)
