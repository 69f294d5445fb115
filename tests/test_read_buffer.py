"""A data set larger than the head read is read into one reused buffer and sent from it.

StoreClient.begin_store reads a file's data set (up to READ_UP_TO bytes) into
a buffer the client keeps, with one preadv, instead of mapping the file: the
buffer's pages stay in the process, so a file costs one copy and no page
faults. Larger data sets are still mapped and streamed in windows. These
tests drive a StoreClient against DCMTK's storescp with small and large
PDUs and check what arrives byte for byte, and what a file cut short while it
is read does (nothing of it is sent; the association goes on).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_fastsend.config import PeerConfig
from dicom_fastsend.engine import scu as scu_module
from dicom_fastsend.engine.inventory import Pending
from dicom_fastsend.engine.messages import Assign
from dicom_fastsend.engine.plan import Batch
from dicom_fastsend.engine.results import Outcome
from dicom_fastsend.engine.scu import READ_UP_TO, StoreClient
from dicom_fastsend.engine.worker import RateLimiter, Worker, WorkerConfig
from dicom_fastsend.io.header import FileInfo, read_header
from dicom_fastsend.protocol.contexts import plan_associations
from dicom_fastsend.sink import Sink
from dicom_fastsend.synth import write_archive
from outcomes import received_outcomes
from peers import StoreSCP, dataset_bytes


def files_of_sizes(directory: Path) -> list[Path]:
    """Files of about 8 KB, 32 KB and 512 KB of pixel data, then a small one again."""
    files: list[Path] = []
    for seed, rows in enumerate((64, 128, 512, 96)):
        files += write_archive(
            directory / str(rows),
            studies=1,
            instances_per_study=1,
            rows=rows,
            columns=rows,
            seed=seed,
        )
    return files


def opened_client(port: int, ae_title: str, infos: list[FileInfo]) -> StoreClient:
    client = StoreClient(PeerConfig("127.0.0.1", port, ae_title))
    [contexts] = plan_associations({(i.sop_class_uid, i.transfer_syntax_uid) for i in infos})
    client.open(contexts)
    return client


@pytest.fixture
def mappings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The sizes of the files StoreClient maps (the mmap path), as they are mapped."""
    mapped: list[int] = []
    original = scu_module.mmap.mmap

    def counting(descriptor: int, length: int, *args: Any, **kwargs: Any) -> Any:
        mapped.append(os.fstat(descriptor).st_size)
        return original(descriptor, length, *args, **kwargs)

    monkeypatch.setattr(scu_module.mmap, "mmap", counting)
    yield mapped


def store_all(client: StoreClient, infos: list[FileInfo]) -> list[int]:
    assert client.contexts is not None
    statuses = []
    for info in infos:
        selection = client.contexts.select(info.sop_class_uid, info.transfer_syntax_uid)
        statuses.append(client.store(info, selection).status)
    client.release()
    return statuses


@pytest.mark.parametrize("max_pdu", [4096, 131072])
def test_data_sets_are_read_into_one_reused_buffer_and_arrive_byte_for_byte(
    tmp_path: Path,
    storescp_factory: Callable[..., StoreSCP],
    mappings: list[int],
    max_pdu: int,
) -> None:
    files = files_of_sizes(tmp_path / "in")
    infos = [read_header(p) for p in files]
    largest = max(i.size - i.dataset_offset for i in infos)
    assert 256 * 1024 < largest <= READ_UP_TO  # several PDUs of either size
    peer = storescp_factory(max_pdu=max_pdu)
    client = opened_client(peer.port, peer.aet, infos)
    assert client.peer_maximum_length == max_pdu
    assert store_all(client, infos) == [0] * len(infos), peer.output()
    assert mappings == []  # none was mapped
    # One buffer, as large as the largest data set, kept for the next file.
    assert len(client._read_buffer) == largest
    received = {dataset_bytes(p) for p in peer.files()}
    assert received == {dataset_bytes(p) for p in files}


def test_a_data_set_above_read_up_to_is_still_mapped_and_streamed(
    tmp_path: Path,
    storescp_factory: Callable[..., StoreSCP],
    mappings: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = files_of_sizes(tmp_path / "in")
    infos = [read_header(p) for p in files]
    # 40,000 bytes: the 512x512 file goes mapped, the others read.
    monkeypatch.setattr(scu_module, "READ_UP_TO", 40_000)
    monkeypatch.setattr(scu_module, "STREAM_WINDOW", 100_000)  # and in windows
    peer = storescp_factory(max_pdu=16384)
    client = opened_client(peer.port, peer.aet, infos)
    assert store_all(client, infos) == [0] * len(infos), peer.output()
    assert mappings == [i.size for i in infos if i.size - i.dataset_offset > 40_000]
    assert len(mappings) == 1
    assert {dataset_bytes(p) for p in peer.files()} == {dataset_bytes(p) for p in files}


@pytest.mark.parametrize("read_ahead", [True, False])
def test_a_file_cut_short_while_it_is_read_fails_named_and_the_association_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_ahead: bool
) -> None:
    """Cut after its size was checked (fstat) and before its bytes were read: the
    read comes up short, nothing of the file has been sent, so the file fails
    with the sizes and the next one goes on the same association. Read ahead
    (prefetch), the short read keeps nothing and begin_store finds the new
    size; without it, begin_store's own read comes up short."""
    if not read_ahead:
        monkeypatch.setattr(StoreClient, "prefetch", lambda self, info: None)
    files = sorted(
        write_archive(tmp_path / "a", studies=1, instances_per_study=3, rows=256, columns=256)
    )
    cut, before_read = files[1], files[2]
    cut_size = cut.stat().st_size
    original = os.preadv

    def cutting(descriptor: int, buffers: Any, offset: int, *args: Any) -> int:
        name = os.readlink(f"/proc/self/fd/{descriptor}")
        if name == str(cut) and os.path.getsize(cut) > 1000:
            os.truncate(cut, 1000)  # after fstat found the size admission read
        return original(descriptor, buffers, offset, *args)

    monkeypatch.setattr(scu_module.os, "preadv", cutting)
    with Sink(ae_title="SINK") as sink:
        coordinator, worker_end = multiprocessing.Pipe(duplex=True)
        config = WorkerConfig(0, PeerConfig("127.0.0.1", sink.port, "SINK"))
        worker = Worker(config, worker_end, RateLimiter(None, None, 0.0))
        batch = Batch(1, tuple(Pending(str(p), p.stat().st_size, p.stat().st_mtime) for p in files))
        coordinator.send(Assign(batch))
        while worker._ahead is None or worker._ahead:
            worker._look_ahead()  # headers read: the files are admitted at their sizes
        size = before_read.stat().st_size
        os.truncate(before_read, size // 2)  # cut before its size is checked
        worker.send_batch(batch)
        worker._report_queued()
        opened = worker.client  # still the first association
        assert opened.is_open
        opened.release()
        outcomes = received_outcomes(coordinator)
    assert outcomes[str(files[0])].outcome is Outcome.STORED
    short = outcomes[str(cut)]
    assert short.outcome is Outcome.FAILED
    assert f"size changed from {cut_size} to 1000 bytes since it was read" in short.reason
    assert ("while being read" in short.reason) is not read_ahead
    early = outcomes[str(before_read)]
    assert early.outcome is Outcome.FAILED
    assert f"size changed from {size} to {size // 2} bytes since it was read" in early.reason
    assert sink.stats.instances == 1
    assert sink.stats.associations == 1


def run_batch(worker: Worker, coordinator: Any, files: list[Path]) -> dict[str, Any]:
    """send_batch of ``files`` after the look-ahead read their headers; the outcomes."""
    batch = Batch(1, tuple(Pending(str(p), p.stat().st_size, p.stat().st_mtime) for p in files))
    coordinator.send(Assign(batch))
    while worker._ahead is None or worker._ahead:
        worker._look_ahead()
    return {"batch": batch}


def collect(worker: Worker, coordinator: Any) -> dict[str, Any]:
    worker._report_queued()
    worker.client.release()
    outcomes = received_outcomes(coordinator)
    return outcomes


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bool]]:
    """(what, path, whether it was read ahead) for each begin_store, prefetch, finish_store."""
    seen: list[tuple[str, str, bool]] = []
    begin, prefetch, finish = (
        StoreClient.begin_store,
        StoreClient.prefetch,
        StoreClient.finish_store,
    )

    def begin_store(self: StoreClient, info: FileInfo, *args: Any) -> int:
        seen.append(("begin", info.path, self._prefetched is not None))
        return begin(self, info, *args)

    def prefetch_(self: StoreClient, info: FileInfo) -> None:
        prefetch(self, info)
        seen.append(("prefetch", info.path, self._prefetched is not None))

    def finish_store(self: StoreClient, *args: Any) -> Any:
        seen.append(("finish", "", False))
        return finish(self, *args)

    monkeypatch.setattr(StoreClient, "begin_store", begin_store)
    monkeypatch.setattr(StoreClient, "prefetch", prefetch_)
    monkeypatch.setattr(StoreClient, "finish_store", finish_store)
    return seen


def test_the_next_data_set_is_read_while_the_peer_stores_the_current_one(
    tmp_path: Path,
    storescp_factory: Callable[..., StoreSCP],
    calls: list[tuple[str, str, bool]],
    mappings: list[int],
) -> None:
    files = sorted(
        write_archive(tmp_path / "a", studies=1, instances_per_study=3, rows=256, columns=256)
    )
    peer = storescp_factory(max_pdu=16384)
    coordinator, worker_end = multiprocessing.Pipe(duplex=True)
    config = WorkerConfig(0, PeerConfig("127.0.0.1", peer.port, peer.aet))
    worker = Worker(config, worker_end, RateLimiter(None, None, 0.0))
    worker.send_batch(run_batch(worker, coordinator, files)["batch"])
    outcomes = collect(worker, coordinator)
    assert {o.outcome for o in outcomes.values()} == {Outcome.STORED}, peer.output()
    a, b, c = (str(p) for p in files)
    # Each next file is read after its predecessor's request went and before
    # its response is awaited; its C-STORE then starts from what was read.
    assert calls == [
        ("begin", a, False),
        ("prefetch", b, True),
        ("finish", "", False),
        ("begin", b, True),
        ("prefetch", c, True),
        ("finish", "", False),
        ("begin", c, True),
        ("finish", "", False),
    ]
    assert mappings == []
    assert {dataset_bytes(p) for p in peer.files()} == {dataset_bytes(p) for p in files}


def test_a_file_changed_since_its_header_was_read_is_not_read_ahead(
    tmp_path: Path, calls: list[tuple[str, str, bool]]
) -> None:
    """The prefetch checks what begin_store checks: a file rewritten at the same
    size (new mtime) is not kept, and begin_store refuses it, named."""
    files = sorted(
        write_archive(tmp_path / "a", studies=1, instances_per_study=3, rows=256, columns=256)
    )
    with Sink(ae_title="SINK") as sink:
        coordinator, worker_end = multiprocessing.Pipe(duplex=True)
        config = WorkerConfig(0, PeerConfig("127.0.0.1", sink.port, "SINK"))
        worker = Worker(config, worker_end, RateLimiter(None, None, 0.0))
        batch = run_batch(worker, coordinator, files)["batch"]
        status = files[1].stat()
        os.utime(files[1], (status.st_atime, status.st_mtime + 60))
        worker.send_batch(batch)
        outcomes = collect(worker, coordinator)
    assert ("prefetch", str(files[1]), False) in calls  # tried, nothing kept
    # (The next one is not read ahead: a refusal returns before the wait.)
    changed = outcomes[str(files[1])]
    assert changed.outcome is Outcome.FAILED
    assert "modified since its header was read" in changed.reason
    assert outcomes[str(files[0])].outcome is outcomes[str(files[2])].outcome is Outcome.STORED
    assert sink.stats.instances == 2
