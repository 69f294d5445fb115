"""--max-ops: the Asynchronous Operations Window (PS3.7 D.3.3.3), with our sink and pynetdicom."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import dicom_fastsend as fs
from dicom_fastsend.engine.scu import negotiated_window
from dicom_fastsend.sink import MAX_OPERATIONS_PERFORMED, Sink
from fastsend_cli import fastsend
from peers import LOOPBACK, PynetdicomSCP, SynthArchive


@pytest.mark.parametrize(
    ("proposed", "answer", "window"),
    [
        (8, None, 1),  # no answer: the default, one at a time
        (8, (1, 1), 1),  # pynetdicom's answer
        (8, (1, 4), 4),  # the acceptor performs at most 4
        (8, (1, 0), 8),  # 0: unlimited, so ours
        (1, (1, 64), 1),  # we asked for nothing
    ],
)
def test_negotiated_window(proposed: int, answer: tuple[int, int] | None, window: int) -> None:
    assert negotiated_window(proposed, answer) == window


@pytest.fixture
def slow_sink() -> Iterator[Sink]:
    # 20 ms per C-STORE-RSP: a sender that waits for each stalls; one that
    # pipelines has the next requests waiting when the sink looks again.
    with Sink(ae_title="SINK", response_delay=0.02) as receiver:
        yield receiver


def test_pipelined_stores_arrive_and_are_all_accounted(
    archive: SynthArchive, slow_sink: Sink, tmp_path: Path
) -> None:
    peer = fs.PeerConfig(host=LOOPBACK, port=slow_sink.port, called_ae_title="SINK")
    config = fs.SendConfig(
        peer=peer, inputs=(archive.root,), recursive=True, max_ops=8, log_dir=tmp_path / "logs"
    )
    summary = fs.send(config)
    assert summary.exit_code == 0
    assert summary.count(fs.Outcome.STORED) == len(archive.files)
    assert sorted(slow_sink.stats.received_uids) == sorted(archive.uids)  # each once
    assert slow_sink.stats.max_pipelined > 1, "no C-STOREs were ever outstanding together"
    [log] = (tmp_path / "logs").glob("fastsend_*.log")
    assert f"(window {min(8, MAX_OPERATIONS_PERFORMED)})" in log.read_text()


def test_one_at_a_time_without_max_ops(
    archive: SynthArchive, slow_sink: Sink, tmp_path: Path
) -> None:
    peer = fs.PeerConfig(host=LOOPBACK, port=slow_sink.port, called_ae_title="SINK")
    config = fs.SendConfig(peer=peer, inputs=(archive.root,), recursive=True, log_dir=None)
    assert fs.send(config).exit_code == 0
    assert slow_sink.stats.max_pipelined == 1


def test_a_peer_that_declines_gets_one_at_a_time(
    archive: SynthArchive, pynetdicom_scp: PynetdicomSCP, tmp_path: Path
) -> None:
    run = fastsend(
        "send", "-i", str(archive.root), "-r", "-a", pynetdicom_scp.ae_title, "-H", LOOPBACK,
        "-p", str(pynetdicom_scp.port), "--max-ops", "16", "--log-dir", str(tmp_path),
    )  # fmt: skip
    assert run.returncode == 0, run.output
    assert {r.sop_instance_uid for r in pynetdicom_scp.records()} == archive.uids
    # The session log says the window was refused, so the user knows why
    # --max-ops changed nothing.
    [log] = tmp_path.glob("fastsend_*.log")
    assert "(--max-ops 16 declined: the peer takes one C-STORE at a time)" in log.read_text()


def test_statuses_and_a_lost_association_still_account_for_every_file(
    archive: SynthArchive, tmp_path: Path
) -> None:
    """Mid-pipeline A-ABORT: the outstanding files go through the careful path and retries."""
    from hostile import AbortMidDataset, Accept, HostileSCP, Respond, Script

    script = Script(
        default_association=Accept(window=4),
        stores={3: AbortMidDataset(after_bytes=100)},
        default_store=Respond(0),
    )
    with HostileSCP(script) as scp:
        run = fastsend(
            "send", "-i", str(archive.root), "-r", "-a", "HOSTILE", "-H", LOOPBACK,
            "-p", str(scp.port), "--max-ops", "4", "--retry-delay", "0.01",
            "--log-dir", str(tmp_path / "logs"),
        )  # fmt: skip
        assert run.returncode == 0, run.output
        assert set(scp.stored_uids()) == archive.uids
    log = next((tmp_path / "logs").glob("fastsend_2*.log")).read_text()
    assert "(window 4)" in log  # the pipeline was on when the association was lost
    assert "association aborted" in log
