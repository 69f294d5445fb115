"""The worker's look-ahead: the next batch's headers are read while a C-STORE is out.

A forked worker has its next batch in its pipe while it sends the current
one; Worker._look_ahead takes it early and reads its headers during the
waits for the responses, so that the batch's admission only claims them.
These tests drive a Worker in this process over a real pipe, with no peer.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from dicom_fastsend.config import PeerConfig
from dicom_fastsend.engine import worker as worker_module
from dicom_fastsend.engine.inventory import Pending
from dicom_fastsend.engine.messages import Assign, Outcomes, Stop
from dicom_fastsend.engine.plan import Batch
from dicom_fastsend.engine.results import Outcome
from dicom_fastsend.engine.worker import LOOK_AHEAD, RateLimiter, Worker, WorkerConfig
from dicom_fastsend.io.header import HEAD_LENGTH
from dicom_fastsend.sink import Sink
from dicom_fastsend.synth import write_archive
from outcomes import received_outcomes


def pending(paths: list[Path]) -> tuple[Pending, ...]:
    return tuple(Pending(str(p), p.stat().st_size, p.stat().st_mtime) for p in paths)


def make_worker() -> tuple[Worker, Connection]:
    coordinator, worker_end = multiprocessing.Pipe(duplex=True)
    config = WorkerConfig(0, PeerConfig("127.0.0.1", 9, "NOBODY"))
    return Worker(config, worker_end, RateLimiter(None, None, 0.0)), coordinator


def test_the_next_batch_is_read_ahead_and_its_admission_uses_what_was_read(
    tmp_path: Path,
) -> None:
    files = sorted(write_archive(tmp_path / "a", studies=1, instances_per_study=5))
    not_dicom = tmp_path / "a" / "notes.txt"
    not_dicom.write_text("not DICOM")
    worker, coordinator = make_worker()
    worker._look_ahead()  # nothing in the pipe yet: nothing to do
    assert worker._early is None and not worker._heads

    batch = Batch(7, (*pending(files), *pending([not_dicom])))
    coordinator.send(Assign(batch))
    worker._look_ahead()
    assert worker._early == Assign(batch)
    assert list(worker._heads) == [str(p) for p in files[:LOOK_AHEAD]]
    while worker._ahead:
        worker._look_ahead()
    assert set(worker._heads) == {str(p) for p in files}  # the unreadable one is left to admit

    # What was read ahead is what admission takes: the files are gone from
    # the disk now, and still admitted with the headers read before.
    for path in files:
        os.remove(path)
    infos = worker._admit(batch)
    assert [info.path for info in infos] == [str(p) for p in files]
    assert not worker._heads
    # The file the look-ahead could not read is read again and reported.
    report = coordinator.recv()
    assert isinstance(report, Outcomes)
    assert [done.result.path for done in report.done] == [str(not_dicom)]


def test_a_stop_taken_early_reads_nothing_ahead(tmp_path: Path) -> None:
    worker, coordinator = make_worker()
    coordinator.send(Stop())
    worker._look_ahead()
    assert worker._early == Stop() and worker._ahead == [] and not worker._heads


def test_a_worker_stopping_reads_nothing_ahead(tmp_path: Path) -> None:
    files = write_archive(tmp_path / "a", studies=1, instances_per_study=2)
    worker, coordinator = make_worker()
    coordinator.send(Assign(Batch(1, pending(sorted(files)))))
    worker.stopping = True
    worker._look_ahead()
    assert worker._early is None and not worker._heads


def test_any_error_of_a_file_read_ahead_is_left_to_admission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only a HeaderError: a C-STORE-RSP is outstanding while the look-ahead reads,
    and nothing of the next batch may end the file in flight."""
    files = sorted(write_archive(tmp_path / "a", studies=1, instances_per_study=3))
    broken = str(files[1])
    real = worker_module.read_header_and_content

    def read(path: str) -> object:
        if path == broken:
            raise OSError(5, "Input/output error")
        return real(path)

    monkeypatch.setattr(worker_module, "read_header_and_content", read)
    worker, coordinator = make_worker()
    coordinator.send(Assign(Batch(1, pending(files))))
    while worker._ahead is None or worker._ahead:
        worker._look_ahead()
    assert set(worker._heads) == {str(files[0]), str(files[2])}


def test_a_file_rewritten_at_the_same_size_after_its_header_was_read_is_not_sent(
    tmp_path: Path,
) -> None:
    """The look-ahead reads a batch's headers up to a batch early: a file rewritten
    since (same size, new mtime) must not go out under the claim of the old one."""
    files = sorted(write_archive(tmp_path / "a", studies=1, instances_per_study=2, rows=128))
    assert all(p.stat().st_size > HEAD_LENGTH for p in files)  # the mapped path
    with Sink(ae_title="SINK") as sink:
        coordinator, worker_end = multiprocessing.Pipe(duplex=True)
        config = WorkerConfig(0, PeerConfig("127.0.0.1", sink.port, "SINK"))
        worker = Worker(config, worker_end, RateLimiter(None, None, 0.0))
        batch = Batch(1, pending(files))
        coordinator.send(Assign(batch))
        while worker._ahead is None or worker._ahead:
            worker._look_ahead()
        rewritten = files[0]
        status = rewritten.stat()
        os.utime(rewritten, (status.st_atime, status.st_mtime + 60))
        worker.send_batch(batch)
        worker._report_queued()
        worker.client.release()
        outcomes = received_outcomes(coordinator)
    assert outcomes[str(files[1])].outcome is Outcome.STORED
    changed = outcomes[str(rewritten)]
    assert changed.outcome is Outcome.FAILED
    assert "modified since its header was read" in changed.reason
    assert sink.stats.instances == 1
