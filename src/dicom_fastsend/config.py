"""Configuration objects: what the CLI (and the Python API) turn options into."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ._record import Value, setfield

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


class TLSConfig(Value):
    """DICOM TLS (PS3.15 B.9, BCP 195): TLS 1.2 or newer, server verified by default."""

    ca_file: Path | None  # trust these CAs (default: the system's)
    cert_file: Path | None  # our certificate, for peers that require one
    key_file: Path | None  # its private key (default: inside cert_file)
    verify: bool  # False only on explicit request (--tls-no-verify)
    __slots__ = ("ca_file", "cert_file", "key_file", "verify")
    _fields = __slots__

    def __init__(
        self,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        verify: bool = True,
    ) -> None:
        setfield(self, "ca_file", ca_file)
        setfield(self, "cert_file", cert_file)
        setfield(self, "key_file", key_file)
        setfield(self, "verify", verify)


class UserCredentials(Value):
    """User Identity negotiation (PS3.7 D.3.3.7); the password stays out of repr()."""

    username: str
    password: str | None
    __slots__ = ("username", "password")
    _fields = __slots__
    _repr_hidden = ("password",)

    def __init__(self, username: str, password: str | None = None) -> None:
        setfield(self, "username", username)
        setfield(self, "password", password)


class PeerConfig(Value):
    """Where to send, and how long to wait at each protocol step."""

    host: str
    port: int
    called_ae_title: str
    calling_ae_title: str
    connect_timeout: float  # TCP connect
    acse_timeout: float  # A-ASSOCIATE-AC and A-RELEASE-RP
    dimse_timeout: float  # each C-STORE-RSP / C-ECHO-RSP
    max_pdu_length: int
    tls: TLSConfig | None
    user: UserCredentials | None
    __slots__ = (
        "host",
        "port",
        "called_ae_title",
        "calling_ae_title",
        "connect_timeout",
        "acse_timeout",
        "dimse_timeout",
        "max_pdu_length",
        "tls",
        "user",
    )
    _fields = __slots__

    def __init__(
        self,
        host: str,
        port: int,
        called_ae_title: str,
        calling_ae_title: str = DEFAULT_CALLING_AE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        acse_timeout: float = DEFAULT_ACSE_TIMEOUT,
        dimse_timeout: float = DEFAULT_DIMSE_TIMEOUT,
        max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
        tls: TLSConfig | None = None,
        user: UserCredentials | None = None,
    ) -> None:
        setfield(self, "host", host)
        setfield(self, "port", port)
        setfield(self, "called_ae_title", called_ae_title)
        setfield(self, "calling_ae_title", calling_ae_title)
        setfield(self, "connect_timeout", connect_timeout)
        setfield(self, "acse_timeout", acse_timeout)
        setfield(self, "dimse_timeout", dimse_timeout)
        setfield(self, "max_pdu_length", max_pdu_length)
        setfield(self, "tls", tls)
        setfield(self, "user", user)
        self.__post_init__()

    def __post_init__(self) -> None:
        for title in (self.called_ae_title, self.calling_ae_title):
            if not title.strip() or len(title) > 16 or not title.isascii():
                raise ValueError(f"AE title {title!r} must be 1 to 16 ASCII characters")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not between 1 and 65535")
        if self.max_pdu_length and self.max_pdu_length < 4096:
            raise ValueError("the maximum PDU length must be 0 (no limit) or at least 4096")


class CommitConfig(Value):
    """Storage Commitment Push Model (PS3.4 Annex J) as the SCU.

    The destination answers with an N-EVENT-REPORT on the association of the
    request while it is open, or on one it opens to us: then to ``port`` (on
    ``bind``, all interfaces by default), called with our calling AE title.
    ``port`` None: no listener, reports on the same association only.
    """

    port: int | None
    bind: str
    batch: int
    timeout: float
    __slots__ = ("port", "bind", "batch", "timeout")
    _fields = __slots__

    def __init__(
        self,
        port: int | None = None,
        bind: str = "",
        batch: int = DEFAULT_COMMIT_BATCH,
        timeout: float = DEFAULT_COMMIT_TIMEOUT,
    ) -> None:
        setfield(self, "port", port)
        setfield(self, "bind", bind)
        setfield(self, "batch", batch)
        setfield(self, "timeout", timeout)
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            # The destination is configured with this port: an ephemeral one (0) it cannot know.
            raise ValueError(f"--commit-port {self.port} is not between 1 and 65535")
        if self.batch < 1:
            raise ValueError("--commit-batch must be at least 1")
        if self.timeout <= 0:
            raise ValueError("--commit-timeout must be positive")


# Defaults shared by every config that does not name its own (both immutable).
_DEFAULT_COMMIT = CommitConfig()
_LOGS = Path("logs")


class VerifyConfig(Value):
    """A `fastsend verify` run: prove what the journal says the destination holds."""

    peer: PeerConfig
    find: bool  # C-FIND reconciliation (Study Root, PS3.4 C.6.2)
    commit: CommitConfig | None  # None: no commitment
    log_dir: Path  # the missing-list CSV goes here
    journal_path: Path | None  # None: the destination's in log_dir
    __slots__ = ("peer", "find", "commit", "log_dir", "journal_path")
    _fields = __slots__

    def __init__(
        self,
        peer: PeerConfig,
        find: bool = True,
        commit: CommitConfig | None = _DEFAULT_COMMIT,
        log_dir: Path = _LOGS,
        journal_path: Path | None = None,
    ) -> None:
        setfield(self, "peer", peer)
        setfield(self, "find", find)
        setfield(self, "commit", commit)
        setfield(self, "log_dir", log_dir)
        setfield(self, "journal_path", journal_path)
        self.__post_init__()

    def __post_init__(self) -> None:
        if not self.find and self.commit is None:
            raise ValueError("nothing to verify: give --find, --commit or both")

    @property
    def journal(self) -> Path:
        return self.journal_path or default_journal_path(self.log_dir, self.peer)


class SendConfig(Value):
    """A `fastsend send` run."""

    peer: PeerConfig
    inputs: tuple[Path, ...]
    recursive: bool
    verbose: bool
    processes: int
    max_rate_mb_s: float  # across all workers; 0 = unlimited
    log_dir: Path | None  # None: no log files
    progress: bool  # a progress bar on stderr when it is a terminal
    journal_path: Path | None  # None: one per destination in log_dir
    resume: bool  # skip what the journal says this destination holds
    retries: int  # per file, after transient failures
    retry_delay: float  # seconds before the first retry; doubles each time
    # Decompress, inflate or byte-swap a file to Explicit or Implicit VR LE
    # when the peer takes its class only uncompressed (contexts.py).
    transcode: bool
    max_ops: int  # C-STOREs in flight per association, if the peer agrees (PS3.7 D.3.3.3)
    cluster: str | None  # a Dask scheduler (tcp://host:8786): its workers send instead
    commit: CommitConfig | None  # Storage Commitment of what this session stored
    coerce: Coercion | None  # --coerce RULES.csv, read and checked (io/coerce.py)
    # Migration controls (engine/order.py, schedule.py, metrics.py).
    order: str  # path (streaming), newest-first or oldest-first (by Study Date/Time)
    priority_list: tuple[str, ...]  # Study Instance UIDs or Accession Numbers, sent first
    schedule: str | None  # time windows: "Mon-Fri 07:00-19:00=20; Sat-Sun=pause"
    metrics_port: int | None  # a Prometheus endpoint on this port (0: any free one)
    metrics_address: str
    metrics_linger: float  # seconds the endpoint still answers after the run
    __slots__ = (
        "peer",
        "inputs",
        "recursive",
        "verbose",
        "processes",
        "max_rate_mb_s",
        "log_dir",
        "progress",
        "journal_path",
        "resume",
        "retries",
        "retry_delay",
        "transcode",
        "max_ops",
        "cluster",
        "commit",
        "coerce",
        "order",
        "priority_list",
        "schedule",
        "metrics_port",
        "metrics_address",
        "metrics_linger",
    )
    _fields = __slots__

    def __init__(
        self,
        peer: PeerConfig,
        inputs: tuple[Path, ...],
        recursive: bool = False,
        verbose: bool = False,
        processes: int = 1,
        max_rate_mb_s: float = 0.0,
        log_dir: Path | None = _LOGS,
        progress: bool = True,
        journal_path: Path | None = None,
        resume: bool = True,
        retries: int = 3,
        retry_delay: float = 0.5,
        transcode: bool = False,
        max_ops: int = 1,
        cluster: str | None = None,
        commit: CommitConfig | None = None,
        coerce: Coercion | None = None,
        order: str = "path",
        priority_list: tuple[str, ...] = (),
        schedule: str | None = None,
        metrics_port: int | None = None,
        metrics_address: str = "127.0.0.1",
        metrics_linger: float = 0.0,
    ) -> None:
        setfield(self, "peer", peer)
        setfield(self, "inputs", inputs)
        setfield(self, "recursive", recursive)
        setfield(self, "verbose", verbose)
        setfield(self, "processes", processes)
        setfield(self, "max_rate_mb_s", max_rate_mb_s)
        setfield(self, "log_dir", log_dir)
        setfield(self, "progress", progress)
        setfield(self, "journal_path", journal_path)
        setfield(self, "resume", resume)
        setfield(self, "retries", retries)
        setfield(self, "retry_delay", retry_delay)
        setfield(self, "transcode", transcode)
        setfield(self, "max_ops", max_ops)
        setfield(self, "cluster", cluster)
        setfield(self, "commit", commit)
        setfield(self, "coerce", coerce)
        setfield(self, "order", order)
        setfield(self, "priority_list", priority_list)
        setfield(self, "schedule", schedule)
        setfield(self, "metrics_port", metrics_port)
        setfield(self, "metrics_address", metrics_address)
        setfield(self, "metrics_linger", metrics_linger)
        self.__post_init__()

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
