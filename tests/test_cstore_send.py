"""`fastsend send` reads C-STORE-RSPs however they are cut up on the wire.

The compiled path reads whole P-DATA-TF PDUs of whole command sets
(parse_command_pdus); anything else goes through the general path. Here the
hostile SCP writes each response in pieces, so that both paths and the
hand-over between them (a PDU whose start the general path buffered) carry
real responses, with statuses and Error Comments, for both implementations.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hostile import HostileSCP, Respond, Script, _Connection
from invariants import assert_nothing_lost
from peers import SynthArchive
from test_faults import archive, inputs, path_of, retries, send

__all__ = ["archive"]  # the fixture, imported for its use here

# Where each response is cut: DCMTK writes the PDU and PDV headers (12 bytes)
# apart from the command set; the others cut inside a header and inside a value.
CUTS = {"header-apart": (12,), "inside-headers": (3, 9), "inside-values": (20, 40, 41)}


@pytest.mark.parametrize("implementation", ["cython", "python"])
@pytest.mark.parametrize("cut", list(CUTS))
def test_responses_cut_into_pieces_are_read_with_their_statuses(
    archive: SynthArchive,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cut: str,
    implementation: str,
) -> None:
    original = _Connection.send

    def send_in_pieces(connection: _Connection, data: bytes) -> None:
        if data[:1] != b"\x04":  # only P-DATA-TF: the association goes whole
            original(connection, data)
            return
        start = 0
        for at in (*CUTS[cut], len(data)):
            original(connection, data[start:at])
            start = at
            time.sleep(0.01)  # each piece its own read

    monkeypatch.setattr(_Connection, "send", send_in_pieces)
    script = Script(
        stores={
            1: Respond(status=0xB000, error_comment="coerced here"),
            4: Respond(status=0xA700, error_comment="hostile is full"),
        }
    )
    with HostileSCP(script) as scp:
        run = send(scp, archive, tmp_path, *retries(0), implementation=implementation)
        records = scp.store_records()
    assert run.returncode == 1, run.stderr
    warned = path_of(archive, records[1].sop_instance_uid)
    failed = path_of(archive, records[4].sop_instance_uid)
    stored = assert_nothing_lost(run.summary, inputs(archive), run.log_dir)
    assert stored == set(inputs(archive)) - {failed, warned}  # (stored with a warning apart)
    [warning] = run.summary["warnings"]
    assert (warning["path"], warning["status"]) == (warned, "0xB000")
    assert "coerced here" in run.stderr_line("WARNING", warned)
    assert run.failure(failed)["status"] == "0xA700"
    assert "hostile is full" in run.stderr_line("FAILED", failed)
    # One association throughout: no piece was taken for a protocol error.
    assert [a.accepted for a in scp.association_records()] == [True]
    assert len(records) == len(archive.files)
