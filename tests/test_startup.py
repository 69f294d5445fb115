"""Start-up of the `fastsend` command: what it imports, the value classes, the quick exit.

A one-file send spends most of its CPU starting: these tests keep the cuts
made for it (lazy imports, msgspec structs instead of dataclasses on the send
path, no interpreter teardown at exit) from coming undone without notice. None of them times
anything: they check what is imported, what the classes do, and what the
command leaves behind.
"""

from __future__ import annotations

import html
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from dicom_fastsend.audit import _e
from dicom_fastsend.config import (
    CommitConfig,
    PeerConfig,
    SendConfig,
    TLSConfig,
    UserCredentials,
)
from dicom_fastsend.engine.inventory import Pending
from dicom_fastsend.engine.messages import Assign, Finished
from dicom_fastsend.engine.plan import Batch
from dicom_fastsend.engine.results import SendSummary, WorkerStats
from dicom_fastsend.engine.worker import WorkerConfig
from dicom_fastsend.io.header import FileInfo
from dicom_fastsend.protocol.pdu import UserIdentity
from dicom_fastsend.sink import Sink
from dicom_fastsend.synth import write_archive

# What only other commands or options need: a plain send must not import it.
NOT_FOR_A_PLAIN_SEND = (
    "dicom_fastsend.benchmark",
    "dicom_fastsend.engine.cluster",
    "dicom_fastsend.engine.metrics",
    "dicom_fastsend.engine.order",
    "dicom_fastsend.engine.verify",
    "dicom_fastsend.io.coerce",
    "dicom_fastsend.io.convert",
    "dicom_fastsend.sink",
    "dicom_fastsend.status",
    "dicom_fastsend.survey",
    "dicom_fastsend.synth",
    "concurrent.futures",
    "distributed",
    "html",  # audit.py escapes without it
    "encodings.idna",  # getaddrinfo gets an ASCII host as bytes
    "numpy",
    "prometheus_client",
    "pydicom",
)

# Imported by `send` when it runs, not by `import dicom_fastsend.cli` (--help, -V, echo...).
THE_ENGINE = (
    "dicom_fastsend.audit",
    "dicom_fastsend.engine.coordinator",
    "dicom_fastsend.engine.inventory",
    "dicom_fastsend.engine.local",
    "dicom_fastsend.engine.worker",
    "dicom_fastsend.report",
    "dicom_fastsend.sender",
    "multiprocessing",
    "sqlite3",
)

# The dataclasses left on the send path: tests use dataclasses.replace on FileInfo
# and dataclasses.fields on FileResult.
DATACLASSES_ALLOWED = {
    "dicom_fastsend.io.header.FileInfo",
    "dicom_fastsend.engine.results.FileResult",
}


def _modules_after(code: str) -> set[str]:
    """sys.modules of a fresh interpreter after ``code``."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(run.stdout.splitlines()[-1]))


def test_importing_the_cli_imports_no_engine() -> None:
    loaded = _modules_after("import dicom_fastsend.cli")
    assert not loaded & {*NOT_FOR_A_PLAIN_SEND, *THE_ENGINE}


def test_a_one_file_send_imports_only_what_it_needs(sink: Sink, tmp_path: Path) -> None:
    (path,) = write_archive(tmp_path / "archive", studies=1, instances_per_study=1)
    seen = tmp_path / "modules.json"
    # The real command (cli.run, as `python -m dicom_fastsend`), with an atexit
    # function that records sys.modules: it must still run before the quick exit.
    args = ["send", "-i", str(path), "-a", "SINK", "-H", "127.0.0.1", "-p", str(sink.port)]
    args += ["--log-dir", str(tmp_path / "logs"), "--no-progress"]
    code = (
        "import atexit, json, sys\n"
        "def record() -> None:\n"
        f"    open({str(seen)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n"
        "atexit.register(record)\n"
        f"sys.argv = ['fastsend', *{args!r}]\n"
        "import runpy\n"
        "runpy.run_module('dicom_fastsend', run_name='__main__', alter_sys=True)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "1 files: 1 stored" in run.stderr
    loaded = set(json.loads(seen.read_text()))
    assert set(THE_ENGINE) <= loaded
    assert not loaded & set(NOT_FOR_A_PLAIN_SEND)


def test_no_dataclass_is_made_on_the_send_path() -> None:
    code = (
        "import json, sys, dicom_fastsend.cli, dicom_fastsend.sender, dicom_fastsend.audit\n"
        "import dicom_fastsend.engine.local\n"
        "made = sorted(\n"
        "    f'{name}.{value.__qualname__}'\n"
        "    for name, module in list(sys.modules.items()) if name.startswith('dicom_fastsend')\n"
        "    for value in vars(module).values()\n"
        "    if isinstance(value, type) and value.__module__ == name\n"
        "    and '__dataclass_fields__' in vars(value)\n"
        ")\n"
        "print(json.dumps(made))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    made = set(json.loads(run.stdout))
    unexpected = made - DATACLASSES_ALLOWED
    # Each @dataclass execs the source of its methods at import (~0.33 ms a
    # class): on this path, write a msgspec.Struct instead (built in C).
    assert not unexpected


def test_a_frozen_struct_is_immutable_equal_and_hashed_by_its_fields() -> None:
    peer = PeerConfig("pacs", 104, "NEWPACS")
    same = PeerConfig("pacs", 104, "NEWPACS")
    assert peer == same and hash(peer) == hash(same) and len({peer, same}) == 1
    assert peer != PeerConfig("pacs", 105, "NEWPACS")
    assert peer != ("pacs", 104, "NEWPACS")
    with pytest.raises(AttributeError):
        peer.port = 11112  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del peer.host  # type: ignore[misc]
    assert peer.port == 104 and peer.host == "pacs"
    assert repr(peer).startswith("PeerConfig(host='pacs', port=104, called_ae_title='NEWPACS',")
    batch = Batch(7, (Pending("/a/1.dcm", 10, 1.5),))
    assert {batch: 1}[Batch(7, (Pending("/a/1.dcm", 10, 1.5),))] == 1
    assert batch != Batch(7, (Pending("/a/1.dcm", 10, 1.5),), attempt=2)


def test_a_struct_keeps_its_checks_and_defaults() -> None:
    config = SendConfig(PeerConfig("pacs", 104, "NEWPACS"), (Path("/archive"),), processes=4)
    assert config.log_dir == Path("logs") and config.commit is None and config.resume
    with pytest.raises(ValueError, match="--commit-batch"):
        CommitConfig(batch=0)
    with pytest.raises(ValueError, match="AE title"):
        PeerConfig("pacs", 104, "")
    # msgspec.structs.replace runs __post_init__, as dataclasses.replace ran __init__.
    with pytest.raises(ValueError, match="--commit-batch"):
        replace(CommitConfig(), batch=0)


def test_the_messages_to_workers_pickle_and_come_back_equal() -> None:
    # What crosses a pipe to a spawned worker or goes to a Dask task: the
    # worker's config (peer, TLS, credentials with the password), its batches,
    # and its statistics back.
    tls = TLSConfig(ca_file=Path("/ca.pem"))
    peer = PeerConfig("pacs", 104, "NEWPACS", tls=tls, user=UserCredentials("alice", "secret"))
    ct, explicit_le = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"
    info = FileInfo("/a/2.dcm", 20, 2.5, ct, "1.2.3", explicit_le, "1.2", 132)
    stats = WorkerStats(3, 4321, files=2, exit="finished")
    originals = [
        WorkerConfig(3, peer, max_rate=1e6, journal_path=Path("/j.sqlite"), session_id="s"),
        Assign(Batch(7, (Pending("/a/1.dcm", 10, 1.5), info), attempt=2)),
        Finished(3, stats),
        UserIdentity(2, b"alice", b"secret", True),
    ]
    for original in originals:
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            copy = pickle.loads(pickle.dumps(original, protocol=protocol))
            assert copy == original and type(copy) is type(original)
    copy = pickle.loads(pickle.dumps(originals[0]))
    assert copy.peer.user is not None and copy.peer.user.password == "secret"


def test_a_password_stays_out_of_repr() -> None:
    credentials = UserCredentials("alice", "secret")
    assert "secret" not in repr(credentials) and "alice" in repr(credentials)
    peer = PeerConfig("pacs", 104, "NEWPACS", user=credentials)
    assert "secret" not in repr(peer) and "alice" in repr(peer)
    identity = UserIdentity(2, b"alice", b"secret")
    assert "secret" not in repr(identity) and "alice" in repr(identity)


def test_replace_copies_with_changes_and_refuses_unknown_fields() -> None:
    batch = Batch(7, ())
    again = replace(batch, attempt=2)
    assert (again.batch_id, again.files, again.attempt) == (7, (), 2) and batch.attempt == 1
    with pytest.raises(TypeError, match="no field 'size'"):
        replace(batch, size=1)


def test_a_mutable_struct_is_equal_by_its_fields_and_unhashable() -> None:
    first, second = SendSummary(), SendSummary()
    second.session_id = first.session_id
    second.started = first.started
    assert first == second
    second.bytes_sent += 1
    assert first != second
    assert first.problems is not second.problems  # a fresh list each (default_factory)
    with pytest.raises(TypeError):
        hash(first)


@given(st.text())
def test_the_audit_escapes_as_html_escape_does(text: str) -> None:
    assert _e(text) == html.escape(text, quote=True)


def test_the_command_exits_with_its_status_and_all_its_output() -> None:
    # cli.run ends the process without the interpreter's teardown: the output
    # must be flushed first, and the status that of the SystemExit.
    help_run = subprocess.run(
        [sys.executable, "-m", "dicom_fastsend", "send", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert help_run.returncode == 0
    assert help_run.stdout.rstrip().endswith("Show this message and exit.")
    usage = subprocess.run(
        [sys.executable, "-m", "dicom_fastsend", "send", "-H", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert usage.returncode == 2 and "Missing option" in usage.stderr
