"""User Identity negotiation (PS3.7 D.3.3.7) against a pynetdicom SCP that checks credentials."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicom_fastsend.protocol.pdu import (
    AAssociateAC,
    AAssociateRQ,
    PresentationContextRQ,
    UserIdentity,
    UserIdentityType,
    UserInformation,
    decode_pdu,
    encode,
)
from fastsend_cli import fastsend
from peers import LOOPBACK, PynetdicomSCP, SynthArchive

SECRET = "correct horse battery staple"


def test_user_identity_sub_item_bytes() -> None:
    identity = UserIdentity(UserIdentityType.USERNAME_AND_PASSCODE, b"alice", b"pw", True)
    context = PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",))
    rq = AAssociateRQ(
        "PACS", "FASTSEND", (context,), UserInformation(16384, user_identity=identity)
    )
    data = encode(rq)
    # PS3.7 D.3.3.7.1: 58H, reserved, length 13, type 2, positive response
    # requested 1, primary length 5, "alice", secondary length 2, "pw".
    expected = bytes([0x58, 0x00]) + struct.pack(">H", 13) + bytes([2, 1])
    expected += struct.pack(">H", 5) + b"alice" + struct.pack(">H", 2) + b"pw"
    assert expected in data
    decoded = decode_pdu(data[0], memoryview(data)[6:])
    assert isinstance(decoded, AAssociateRQ)
    assert decoded.user_information.user_identity == identity
    assert "pw" not in repr(identity)

    ac = AAssociateAC("PACS", "FASTSEND", (), UserInformation(16384, server_response=b"ok"))
    # PS3.7 D.3.3.7.2: 59H, reserved, length 4, response length 2, "ok".
    assert bytes([0x59, 0x00]) + struct.pack(">HH", 4, 2) + b"ok" in encode(ac)
    decoded_ac = decode_pdu(0x02, memoryview(encode(ac))[6:])
    assert isinstance(decoded_ac, AAssociateAC)
    assert decoded_ac.user_information.server_response == b"ok"


@pytest.fixture
def checking_scp(pynetdicom_scp_factory: Callable[..., PynetdicomSCP]) -> PynetdicomSCP:
    """A pynetdicom SCP accepting only alice with SECRET; records what it was given."""

    def check(primary: bytes, secondary: bytes) -> bool:
        return primary == b"alice" and secondary == SECRET.encode()

    return pynetdicom_scp_factory(ae_title="AUTHSCP", check_user=check)


def run_send(archive: SynthArchive, port: int, logs: Path, password: str, *extra: str) -> Any:
    return fastsend(
        "send", "-i", str(archive.root), "-r", "-a", "AUTHSCP", "-H", LOOPBACK, "-p", str(port),
        "--user", "alice", "--password-env", "FASTSEND_TEST_PASSWORD", "--retries", "0",
        "--log-dir", str(logs), *extra, env={"FASTSEND_TEST_PASSWORD": password},
    )  # fmt: skip


def test_right_credentials_store_and_the_password_stays_secret(
    archive: SynthArchive,
    checking_scp: PynetdicomSCP,
    tmp_path: Path,
) -> None:
    run = run_send(archive, checking_scp.port, tmp_path / "logs", SECRET)
    assert run.returncode == 0, run.output
    assert {r.sop_instance_uid for r in checking_scp.records()} == archive.uids
    assert checking_scp.user_attempts[0] == (b"alice", SECRET.encode())
    # Nowhere the user can read: output, log, summary, journal.
    assert SECRET not in run.output
    for path in (tmp_path / "logs").iterdir():
        assert SECRET.encode() not in path.read_bytes(), path.name
    [summary] = (tmp_path / "logs").glob("fastsend_summary_*.json")
    assert json.loads(summary.read_text())["configuration"]["user"] == "alice"


def test_wrong_password_is_rejected_with_a_hint(
    archive: SynthArchive,
    checking_scp: PynetdicomSCP,
    tmp_path: Path,
) -> None:
    run = run_send(archive, checking_scp.port, tmp_path / "logs", "Tr0ub4dor&3")
    assert run.returncode == 3, run.output
    assert "rejected" in run.stderr and "Check the user name 'alice'" in run.stderr
    assert "Tr0ub4dor&3" not in run.stderr
    assert checking_scp.records() == []


def test_password_env_must_exist(archive: SynthArchive) -> None:
    run = fastsend(
        "echo", "-a", "X", "-H", LOOPBACK, "-p", "104", "--user", "alice",
        "--password-env", "FASTSEND_NO_SUCH_VARIABLE",
    )  # fmt: skip
    assert run.returncode == 2
    assert "FASTSEND_NO_SUCH_VARIABLE: that variable is not set" in run.stderr
