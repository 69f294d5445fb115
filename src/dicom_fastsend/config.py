"""Configuration objects: what the CLI (and the Python API) turn options into."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from msgspec import field

if TYPE_CHECKING:
    from .io.coerce import Coercion

DEFAULT_CALLING_AE = "FASTSEND"
# Our receive limit for P-DATA-TF (PS3.8 D.1). Only C-STORE-RSPs come back
# to a sender, so this mostly matters to peers that size their PDUs by ours.
DEFAULT_MAX_PDU_LENGTH = 131072
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_ACSE_TIMEOUT = 30.0
DEFAULT_DIMSE_TIMEOUT = 120.0
# Storage Commitment (PS3.4 Annex J): instances per N-ACTION-RQ, and how long
# to wait for all the N-EVENT-REPORTs after the last N-ACTION-RSP.
DEFAULT_COMMIT_BATCH = 500
DEFAULT_COMMIT_TIMEOUT = 120.0
ORDERS = ("path", "newest-first", "oldest-first")  # --order


class TLSConfig(msgspec.Struct, frozen=True):
    """DICOM TLS (PS3.15 B.9, BCP 195): TLS 1.2 or newer, server verified by default."""

    ca_file: Path | None = None  # trust these CAs (default: the system's)
    cert_file: Path | None = None  # our certificate, for peers that require one
    key_file: Path | None = None  # its private key (default: inside cert_file)
    verify: bool = True  # False only on explicit request (--tls-no-verify)


class UserCredentials(msgspec.Struct, frozen=True):
    """User Identity negotiation (PS3.7 D.3.3.7); the password stays out of repr()."""

    username: str
    password: str | None = None

    def __repr__(self) -> str:
        # The password out of logs and tracebacks (a dataclass field's repr=False).
        return f"{type(self).__name__}(username={self.username!r})"


class PeerConfig(msgspec.Struct, frozen=True):
    """Where to send, and how long to wait at each protocol step."""

    host: str
    port: int
    called_ae_title: str
    calling_ae_title: str = DEFAULT_CALLING_AE
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT  # TCP connect
    acse_timeout: float = DEFAULT_ACSE_TIMEOUT  # A-ASSOCIATE-AC and A-RELEASE-RP
    dimse_timeout: float = DEFAULT_DIMSE_TIMEOUT  # each C-STORE-RSP / C-ECHO-RSP
    max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH
    tls: TLSConfig | None = None
    user: UserCredentials | None = None

    def __post_init__(self) -> None:
        for title in (self.called_ae_title, self.calling_ae_title):
            if not title.strip() or len(title) > 16 or not title.isascii():
                raise ValueError(f"AE title {title!r} must be 1 to 16 ASCII characters")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not between 1 and 65535")
        if self.max_pdu_length and self.max_pdu_length < 4096:
            raise ValueError("the maximum PDU length must be 0 (no limit) or at least 4096")


class CommitConfig(msgspec.Struct, frozen=True):
    """Storage Commitment Push Model (PS3.4 Annex J) as the SCU.

    The destination answers with an N-EVENT-REPORT on the association of the
    request while it is open, or on one it opens to us: then to ``port`` (on
    ``bind``, all interfaces by default), called with our calling AE title.
    ``port`` None: no listener, reports on the same association only.
    """

    port: int | None = None
    bind: str = ""
    batch: int = DEFAULT_COMMIT_BATCH
    timeout: float = DEFAULT_COMMIT_TIMEOUT

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            # The destination is configured with this port: an ephemeral one (0) it cannot know.
            raise ValueError(f"--commit-port {self.port} is not between 1 and 65535")
        if self.batch < 1:
            raise ValueError("--commit-batch must be at least 1")
        if self.timeout <= 0:
            raise ValueError("--commit-timeout must be positive")


class VerifyConfig(msgspec.Struct, frozen=True):
    """A `fastsend verify` run: prove what the journal says the destination holds."""

    peer: PeerConfig
    find: bool = True  # C-FIND reconciliation (Study Root, PS3.4 C.6.2)
    commit: CommitConfig | None = field(default_factory=CommitConfig)  # None: no commitment
    log_dir: Path = field(default_factory=lambda: Path("logs"))  # the missing-list CSV goes here
    journal_path: Path | None = None  # None: the destination's in log_dir

    def __post_init__(self) -> None:
        if not self.find and self.commit is None:
            raise ValueError("nothing to verify: give --find, --commit or both")

    @property
    def journal(self) -> Path:
        return self.journal_path or default_journal_path(self.log_dir, self.peer)


class SendConfig(msgspec.Struct, frozen=True):
    """A `fastsend send` run."""

    peer: PeerConfig
    inputs: tuple[Path, ...]
    recursive: bool = False
    verbose: bool = False
    processes: int = 1
    max_rate_mb_s: float = 0.0  # across all workers; 0 = unlimited
    log_dir: Path | None = field(default_factory=lambda: Path("logs"))  # None: no log files
    progress: bool = True  # a progress bar on stderr when it is a terminal
    journal_path: Path | None = None  # None: one per destination in log_dir
    resume: bool = True  # skip what the journal says this destination holds
    retries: int = 3  # per file, after transient failures
    retry_delay: float = 0.5  # seconds before the first retry; doubles each time
    # Decompress, inflate or byte-swap a file to Explicit or Implicit VR LE
    # when the peer takes its class only uncompressed (contexts.py).
    transcode: bool = False
    max_ops: int = 1  # C-STOREs in flight per association, if the peer agrees (PS3.7 D.3.3.3)
    cluster: str | None = None  # a Dask scheduler (tcp://host:8786): its workers send instead
    commit: CommitConfig | None = None  # Storage Commitment of what this session stored
    coerce: Coercion | None = None  # --coerce RULES.csv, read and checked (io/coerce.py)
    # Migration controls (engine/order.py, schedule.py, metrics.py).
    order: str = "path"  # path (streaming), newest-first or oldest-first (by Study Date/Time)
    priority_list: tuple[str, ...] = ()  # Study Instance UIDs or Accession Numbers, sent first
    schedule: str | None = None  # time windows: "Mon-Fri 07:00-19:00=20; Sat-Sun=pause"
    metrics_port: int | None = None  # a Prometheus endpoint on this port (0: any free one)
    metrics_address: str = "127.0.0.1"
    metrics_linger: float = 0.0  # seconds the endpoint still answers after the run

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError("--processes must be at least 1")
        if self.max_rate_mb_s < 0:
            raise ValueError("--max-rate must not be negative")
        if not 1 <= self.max_ops <= 0xFFFF:
            raise ValueError("--max-ops must be 1 to 65535")
        if self.retries < 0 or self.retry_delay < 0:
            raise ValueError("--retries and --retry-delay must not be negative")
        if self.order not in ORDERS:
            raise ValueError(f"--order must be one of {', '.join(ORDERS)}")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ValueError("--metrics-port must be 0 to 65535")
        if self.metrics_linger < 0:
            raise ValueError("--metrics-linger must not be negative")
        if self.commit is not None and self.journal is None:
            # Refused before anything is sent: what to commit is what the
            # journal records as stored this session.
            raise ValueError(
                "--commit needs the journal, which records what was stored: give --log-dir "
                "or --journal"
            )

    @property
    def journal(self) -> Path | None:
        """The journal (inventory) file in use: the one asked for, else one per destination."""
        if self.journal_path is not None:
            return self.journal_path
        if self.log_dir is None:
            return None
        return default_journal_path(self.log_dir, self.peer)


def destination_key(peer: PeerConfig) -> str:
    """How the inventory names its destination: 'AE@host:port'."""
    return f"{peer.called_ae_title}@{peer.host}:{peer.port}"


def default_journal_path(log_dir: Path, peer: PeerConfig) -> Path:
    """One journal (inventory) per destination in the log directory."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{peer.called_ae_title}_{peer.host}_{peer.port}")
    return log_dir / f"fastsend_journal_{safe}.sqlite"
