"""Real DICOM peers that tests start on loopback and stop afterwards.

- DCMTK ``storescp`` (:func:`start_storescp`, :class:`StoreSCP`)
- Orthanc (:func:`start_orthanc`, :class:`Orthanc`)
- pynetdicom in-process (:class:`PynetdicomSCP`)

Every peer listens on a free port picked at start, writes only under a
directory the caller owns, and is stopped by ``stop()`` / ``shutdown()`` (or
by leaving its ``with`` block). The fixtures in conftest.py wrap these so a
failing test still cleans up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pydicom
from pydicom.dataset import Dataset

# DCMTK's own storescp/storescu, not pynetdicom's scripts of the same name; the
# same lookup and Orthanc configuration as the benchmark (bench/compare.py).
from compare import find_dcmtk, find_orthanc, orthanc_config
from dicom_fastsend import synth
from dicom_fastsend.protocol.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from require import DCMTK_HINT, ORTHANC_HINT, TEST_EXTRA_HINT, missing_peer
from waiting import wait_until

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 30.0


class PeerStartError(RuntimeError):
    """A peer did not come up; the message carries its command and output."""


# --------------------------------------------------------------------------
# Ports and processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The kernel picks it (bind to port 0). Another process could take it
    before the peer binds it; the starters below retry on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no output>"
    return text[-limit:] if text else "<no output>"


def _wait_for_ports(
    proc: subprocess.Popen[bytes],
    ports: Iterable[int],
    *,
    name: str,
    command: Sequence[str],
    log: Path,
    timeout: float,
    ready: Callable[[], bool] | None = None,
) -> None:
    """Block until every port accepts connections (and `ready()` holds).

    Raises PeerStartError with the peer's output if it exits or times out.
    """
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while True:
        if proc.poll() is not None:
            raise PeerStartError(
                f"{name} exited with status {proc.returncode} before accepting "
                f"connections.\ncommand: {' '.join(command)}\noutput:\n{_tail(log)}"
            )
        pending = [port for port in pending if not port_accepts(port)]
        if not pending and (ready is None or ready()):
            return
        if time.monotonic() > deadline:
            _terminate(proc)
            raise PeerStartError(
                f"{name} did not accept connections on port(s) {pending} within "
                f"{timeout:.0f} s.\ncommand: {' '.join(command)}\noutput:\n{_tail(log)}"
            )
        time.sleep(0.05)


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a peer and everything it forked (it runs in its own process group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    else:
        # storescp --fork children may outlive the parent briefly.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _bind_failed(log: Path) -> bool:
    text = _tail(log).lower()
    return "address already in use" in text or "cannot bind" in text or "bind" in text


# --------------------------------------------------------------------------
# DCMTK


def require_dcmtk(tool: str) -> str:
    """DCMTK's `tool`; without it the test is skipped, or fails under FASTSEND_REQUIRE_PEERS."""
    path = find_dcmtk(tool)
    if path is None:
        missing_peer(f"DCMTK's {tool} not found", DCMTK_HINT)
    return path


@dataclass
class StoreSCP:
    """A running DCMTK storescp. Files it stores land in `output_dir`."""

    port: int
    aet: str
    output_dir: Path
    log: Path
    command: list[str]
    process: subprocess.Popen[bytes]
    host: str = LOOPBACK

    def files(self) -> list[Path]:
        """Every file storescp wrote so far, sorted."""
        return sorted(p for p in self.output_dir.rglob("*") if p.is_file())

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of the stored files (read with pydicom)."""
        return {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.files()
        }

    def output(self) -> str:
        """What storescp printed (stdout and stderr), for assertion messages."""
        return _tail(self.log, 100_000)

    def stop(self) -> None:
        _terminate(self.process)

    def __enter__(self) -> StoreSCP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_storescp(
    output_dir: Path,
    *,
    aet: str = "STORESCP",
    max_pdu: int | None = None,
    fork: bool = False,
    tcp_nodelay: bool = False,
    ignore: bool = False,
    extra_args: Sequence[str] = (),
    timeout: float = STARTUP_TIMEOUT,
) -> StoreSCP:
    """Start ``storescp -od output_dir -aet aet [...] PORT`` on a free port.

    `max_pdu` is --max-pdu (DCMTK allows 4096..131072), `fork` adds --fork
    (one child per association), `tcp_nodelay` sets TCP_NODELAY=1 in its
    environment (DCMTK FAQ #48: off by default since 3.6.2), `ignore` adds
    --ignore (receive and discard), `extra_args` go before the port (e.g.
    ``["+xi"]`` to prefer Implicit VR LE). storescp listens on all interfaces
    (it has no bind option); tests only connect to 127.0.0.1.
    """
    binary = require_dcmtk("storescp")
    output_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    last_error: PeerStartError | None = None
    for attempt in range(3):
        port = free_port()
        command = [binary, "-od", str(output_dir), "-aet", aet]
        if max_pdu is not None:
            command += ["--max-pdu", str(max_pdu)]
        if fork:
            command.append("--fork")
        if ignore:
            command.append("--ignore")
        command += [*extra_args, str(port)]
        log = output_dir.parent / f"storescp-{aet}-{port}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                command,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: stop() reaches --fork children
            )
        try:
            _wait_for_ports(
                proc, [port], name="storescp", command=command, log=log, timeout=timeout
            )
        except PeerStartError as exc:
            last_error = exc
            if attempt < 2 and _bind_failed(log):
                continue  # someone took the port between free_port() and bind
            raise
        return StoreSCP(port, aet, output_dir, log, command, proc)
    assert last_error is not None
    raise last_error


def run_dcmtk(tool: str, *args: str, tcp_nodelay: bool = True, timeout: float = 120.0) -> str:
    """Run a DCMTK client tool; return its output, raise with it on failure."""
    binary = require_dcmtk(tool)
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    result = subprocess.run(
        [binary, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        timeout=timeout,
        check=False,
    )
    output = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        raise AssertionError(
            f"{tool} {' '.join(args)} exited with {result.returncode}:\n{output[-4000:]}"
        )
    return output


# --------------------------------------------------------------------------
# Orthanc


@dataclass
class Orthanc:
    """A running Orthanc with its own config, storage and ports."""

    dicom_port: int
    http_port: int
    aet: str
    workdir: Path
    log: Path
    command: list[str]
    process: subprocess.Popen[bytes]
    host: str = LOOPBACK

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def rest(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """Call the REST API; JSON in and out (bytes out if not JSON)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(payload)
            return payload

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance, expanded (ID, MainDicomTags, ...)."""
        found = self.rest("POST", "/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
        assert isinstance(found, list)
        return found

    def sop_instance_uids(self) -> set[str]:
        return {str(item["MainDicomTags"]["SOPInstanceUID"]) for item in self.instances()}

    def orthanc_id(self, sop_instance_uid: str) -> str:
        """Orthanc's own ID of the instance with this SOP Instance UID."""
        for item in self.instances():
            if item["MainDicomTags"].get("SOPInstanceUID") == sop_instance_uid:
                return str(item["ID"])
        raise KeyError(sop_instance_uid)

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The Part 10 file Orthanc stored for this SOP Instance UID."""
        payload = self.rest("GET", f"/instances/{self.orthanc_id(sop_instance_uid)}/file")
        assert isinstance(payload, bytes)
        return payload

    def statistics(self) -> dict[str, Any]:
        stats = self.rest("GET", "/statistics")
        assert isinstance(stats, dict)
        return stats

    def output(self) -> str:
        return _tail(self.log, 100_000)

    def stop(self) -> None:
        _terminate(self.process, timeout=20.0)

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_orthanc(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    config_overrides: dict[str, Any] | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> Orthanc:
    """Start Orthanc with a generated config under `workdir` on free ports.

    `config_overrides` are merged into the generated JSON (e.g.
    ``{"MaximumPduLength": 4096}`` or ``{"DicomScpTimeout": 5}``). Ready when
    both ports accept connections and GET /system answers.
    """
    binary = find_orthanc()
    if binary is None:
        missing_peer("Orthanc not found", ORTHANC_HINT)
    workdir.mkdir(parents=True, exist_ok=True)
    last_error: PeerStartError | None = None
    for attempt in range(3):
        dicom_port, http_port = free_port(), free_port()
        if dicom_port == http_port:
            continue
        config = orthanc_config(
            workdir, dicom_port=dicom_port, http_port=http_port, aet=aet, **(config_overrides or {})
        )
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = workdir / f"orthanc-{dicom_port}.log"
        # Without --verbose Orthanc logs warnings and errors only.
        command = [binary, "--no-jobs", str(config_path)]
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        peer = Orthanc(dicom_port, http_port, aet, workdir, log, command, proc)

        def answers(peer: Orthanc = peer) -> bool:
            try:
                peer.rest("GET", "/system", timeout=2.0)
            except (OSError, urllib.error.URLError, ValueError):
                return False
            return True

        try:
            _wait_for_ports(
                proc,
                [dicom_port, http_port],
                name="Orthanc",
                command=command,
                log=log,
                timeout=timeout,
                ready=answers,
            )
        except PeerStartError as exc:
            _terminate(proc)
            last_error = exc
            if attempt < 2 and _bind_failed(log):
                continue
            raise
        return peer
    assert last_error is not None
    raise last_error


# --------------------------------------------------------------------------
# pynetdicom


@dataclass(frozen=True)
class Received:
    """One C-STORE as PynetdicomSCP saw it."""

    dataset: Dataset  # decoded by pynetdicom/pydicom
    raw: bytes  # the data set bytes exactly as received (no file meta)
    transfer_syntax: str  # of the accepted presentation context
    sop_class_uid: str  # Affected SOP Class UID of the C-STORE-RQ
    sop_instance_uid: str  # Affected SOP Instance UID of the C-STORE-RQ
    max_pdu: int  # our maximum PDU length, i.e. what the client had to respect
    requestor_max_pdu: int  # the maximum the client announced for itself
    calling_aet: str
    called_aet: str
    status: int  # what we answered


StatusSpec = int | Callable[[Dataset], int]


@dataclass
class PynetdicomSCP:
    """An in-process pynetdicom storage SCP on 127.0.0.1.

    Accepts every storage SOP class (AllStoragePresentationContexts) and
    Verification, each in `transfer_syntaxes` (default: pynetdicom's
    defaults: Implicit LE, Explicit LE, Deflated, Explicit BE). `max_pdu` is
    the maximum PDU length it announces (0 = unlimited), `status` the C-STORE
    status to answer, fixed or computed per decoded data set (a callable may
    also sleep to stall or raise to make pynetdicom answer 0xC211).

    Use as ``with PynetdicomSCP(...) as scp:`` or call start()/shutdown().
    """

    ae_title: str = "PYNETDICOM"
    transfer_syntaxes: Sequence[str] | None = None
    max_pdu: int = 16382
    status: StatusSpec = 0x0000
    port: int = 0
    dimse_timeout: float = 30.0
    network_timeout: float = 30.0
    ssl_context: Any = None  # an ssl.SSLContext: DICOM TLS (PS3.15 B.9)
    require_called_aet: bool = False  # reject associations not addressed to ae_title
    # User Identity (PS3.7 D.3.3.7): check(primary, secondary) -> accepted;
    # what was offered is kept in user_attempts.
    check_user: Callable[[bytes, bytes], bool] | None = None
    user_attempts: list[tuple[bytes, bytes]] = field(default_factory=list, init=False)
    received: list[Received] = field(default_factory=list, init=False)
    associations: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _server: Any = field(default=None, init=False, repr=False)

    host: str = LOOPBACK

    def start(self) -> PynetdicomSCP:
        try:
            from pynetdicom import AE, AllStoragePresentationContexts, evt
            from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
        except ImportError as exc:
            missing_peer(f"pynetdicom cannot be imported ({exc})", TEST_EXTRA_HINT)

        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.max_pdu
        ae.dimse_timeout = self.dimse_timeout
        ae.network_timeout = self.network_timeout
        ae.require_called_aet = self.require_called_aet
        # pynetdicom's SCP limit on accepted contexts is the requestor's to
        # respect; as acceptor it may support any number.
        for context in AllStoragePresentationContexts:
            if self.transfer_syntaxes is None:
                ae.add_supported_context(context.abstract_syntax)
            else:
                ae.add_supported_context(context.abstract_syntax, list(self.transfer_syntaxes))
        if self.transfer_syntaxes is None:
            ae.add_supported_context(Verification)
        else:
            ae.add_supported_context(Verification, list(self.transfer_syntaxes))
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
        ]
        if self.check_user is not None:
            handlers.append((evt.EVT_USER_ID, self._on_user_id))
        self._server = ae.start_server(
            (LOOPBACK, self.port), block=False, evt_handlers=handlers, ssl_context=self.ssl_context
        )
        self.port = int(self._server.server_address[1])
        return self

    def _on_user_id(self, event: Any) -> tuple[bool, bytes | None]:
        assert self.check_user is not None
        offered = (bytes(event.primary_field), bytes(event.secondary_field or b""))
        with self._lock:
            self.user_attempts.append(offered)
        accepted = self.check_user(*offered)
        return accepted, (b"welcome" if accepted else None)

    def _on_accepted(self, event: Any) -> None:
        with self._lock:
            self.associations += 1

    def _on_store(self, event: Any) -> int:
        raw = bytes(event.request.DataSet.getvalue())
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        status = self.status(dataset) if callable(self.status) else self.status
        assoc = event.assoc
        record = Received(
            dataset=dataset,
            raw=raw,
            transfer_syntax=str(event.context.transfer_syntax),
            sop_class_uid=str(event.request.AffectedSOPClassUID),
            sop_instance_uid=str(event.request.AffectedSOPInstanceUID),
            max_pdu=int(assoc.acceptor.maximum_length),
            requestor_max_pdu=int(assoc.requestor.maximum_length),
            calling_aet=str(assoc.requestor.ae_title).strip(),
            called_aet=str(assoc.acceptor.ae_title).strip(),
            status=int(status),
        )
        with self._lock:
            self.received.append(record)
        return int(status)

    def records(self) -> list[Received]:
        """A snapshot of what was received so far, in arrival order."""
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until `count` C-STOREs arrived; return them (raise on timeout)."""
        wait_until(
            lambda: len(self.records()) >= count,
            timeout,
            f"{count} C-STOREs at {self.ae_title}",
            state=lambda: f"{len(self.records())} arrived",
        )
        return self.records()

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> PynetdicomSCP:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file, without preamble and File Meta."""
    from dicom_fastsend.io.header import read_header

    return path.read_bytes()[read_header(path).dataset_offset :]


# --------------------------------------------------------------------------
# Synthetic archive


@dataclass(frozen=True)
class SynthArchive:
    """A synthetic archive on disk and what is in it."""

    root: Path
    files: list[Path]
    sop_instance_uids: dict[Path, str]
    transfer_syntaxes: dict[Path, str]
    study_uids: dict[Path, str]

    @property
    def uids(self) -> set[str]:
        return set(self.sop_instance_uids.values())


def make_archive(
    root: Path,
    *,
    explicit_studies: int = 3,
    implicit_studies: int = 1,
    instances_per_study: int = 3,
    rows: int = 32,
    columns: int = 32,
) -> SynthArchive:
    """CT studies in Explicit VR LE plus MR studies in Implicit VR LE under `root`."""
    files = synth.write_archive(
        root,
        studies=explicit_studies,
        instances_per_study=instances_per_study,
        modality="CT",
        rows=rows,
        columns=columns,
        transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
    )
    files += synth.write_archive(
        root,
        studies=implicit_studies,
        instances_per_study=instances_per_study,
        modality="MR",
        rows=rows,
        columns=columns,
        transfer_syntax=IMPLICIT_VR_LITTLE_ENDIAN,
    )
    uids: dict[Path, str] = {}
    syntaxes: dict[Path, str] = {}
    studies: dict[Path, str] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids[path] = str(ds.SOPInstanceUID)
        syntaxes[path] = str(ds.file_meta.TransferSyntaxUID)
        studies[path] = str(ds.StudyInstanceUID)
    return SynthArchive(root, files, uids, syntaxes, studies)
