"""--cluster: the same send on a real Dask cluster (distributed.LocalCluster on loopback).

Two worker processes with one thread each, as `dask worker --nworkers 2
--nthreads 1` would run them on two hosts. The peers are real: storescp in
--fork mode, Orthanc, and fastsend's own sink for the worker-loss test.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicom_fastsend.config import PeerConfig, SendConfig, destination_key
from dicom_fastsend.engine.cluster import ClusterTask, run_task
from dicom_fastsend.engine.coordinator import Coordinator, Hooks
from dicom_fastsend.engine.inventory import Inventory
from dicom_fastsend.engine.plan import Batch
from dicom_fastsend.engine.results import FileResult, Outcome
from dicom_fastsend.engine.worker import WorkerConfig
from dicom_fastsend.io.header import read_header
from dicom_fastsend.sink import Sink
from fastsend_cli import fastsend, send_args
from invariants import assert_nothing_lost, load_summary, log_says
from peers import Orthanc, StoreSCP, SynthArchive, free_port, make_archive
from require import require_module
from waiting import wait_until

# Every test here needs Dask's distributed (in the test extra): without it the
# module is skipped, or fails under FASTSEND_REQUIRE_PEERS=1.
dask = require_module("dask")
distributed = require_module("distributed")
Client, LocalCluster, Variable = distributed.Client, distributed.LocalCluster, distributed.Variable

LOOPBACK = "127.0.0.1"


def start_cluster() -> LocalCluster:
    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host=LOOPBACK,
        dashboard_address=f"{LOOPBACK}:0",
        silence_logs=logging.ERROR,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with start_cluster() as running:
        yield running


@pytest.fixture
def medium_archive(tmp_path: Path) -> SynthArchive:
    """10 studies of 4 instances: several tasks per Dask worker."""
    return make_archive(
        tmp_path / "archive", explicit_studies=8, implicit_studies=2, instances_per_study=4
    )


def journal_stored(summary: dict[str, object], peer: PeerConfig) -> set[str]:
    """Paths the run's journal records as stored at this destination."""
    path = Path(str(summary["journal"]))
    journal = Inventory(path, destination_key(peer), "check")
    try:
        return set(journal.stored())
    finally:
        journal.close()


def hosts_of(summary: dict[str, object]) -> set[str]:
    cluster = summary["cluster"]
    assert isinstance(cluster, dict)
    return {a["host"] for task in cluster["tasks"] for a in task["attempts"]}


def start_slow_send(
    archive: SynthArchive, sink: Sink, scheduler: str, logs: Path, wait_for: int
) -> subprocess.Popen[bytes]:
    """`fastsend send --cluster` in a subprocess, returned once the sink has ``wait_for``."""
    command = [
        sys.executable, "-m", "dicom_fastsend",
        *send_args(LOOPBACK, sink.port, "SINK", str(archive.root)),
        "--cluster", scheduler, "--log-dir", str(logs), "--no-progress",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(
        lambda: sink.stats.instances >= wait_for or process.poll() is not None,
        60,
        f"the run to get going ({wait_for} C-STOREs at the sink)",
        state=lambda: f"{sink.stats.instances} arrived",
    )
    assert sink.stats.instances >= wait_for, f"fastsend exited with {process.returncode} first"
    return process


def tasks_running(client: Client) -> int:
    """Tasks the cluster's workers are still running, including ones Dask cancelled:
    it cannot interrupt a running task, so its thread goes on until the task returns."""
    per_worker: dict[str, int] = client.run(
        lambda dask_worker: len(dask_worker.state.executing) + len(dask_worker.state.long_running)
    )
    return sum(per_worker.values())


def test_each_instance_stored_once_by_storescp_fork(
    cluster: LocalCluster,
    medium_archive: SynthArchive,
    storescp_factory: Callable[..., StoreSCP],
    tmp_path: Path,
) -> None:
    storescp = storescp_factory(fork=True, extra_args=["+uf"])
    logs = tmp_path / "logs"
    run = fastsend(
        *send_args(LOOPBACK, storescp.port, storescp.aet, str(medium_archive.root)),
        "--cluster", cluster.scheduler_address, "--log-dir", str(logs),
    )  # fmt: skip
    assert run.returncode == 0, run.output + storescp.output()
    # --fork: one storescp child per association; +uf: a second store of the
    # same instance would land in a second file instead of overwriting.
    files = storescp.files()
    assert len(files) == len(medium_archive.files), "an instance was stored twice or not at all"
    assert storescp.sop_instance_uids() == medium_archive.uids
    summary = load_summary(logs)
    stored = assert_nothing_lost(summary, [str(p) for p in medium_archive.files], logs)
    assert len(stored) == len(medium_archive.files)
    peer = PeerConfig(LOOPBACK, storescp.port, storescp.aet)
    assert journal_stored(summary, peer) == stored
    assert summary["configuration"]["cluster"] == cluster.scheduler_address
    tasks = summary["cluster"]["tasks"]
    assert len(tasks) > 2  # several tasks per worker, each with whole studies
    batches = [b for t in tasks for b in t["batches"]]
    assert sum(b["files"] for b in batches) == len(medium_archive.files)
    assert all(t["state"] == "finished" and len(t["attempts"]) == 1 for t in tasks)
    # Both Dask workers took tasks.
    workers = {a["worker"] for t in tasks for a in t["attempts"]}
    assert workers == set(cluster.scheduler_info["workers"])
    assert hosts_of(summary) == {os.uname().nodename}
    assert sum(w["files"] for w in summary["workers"]) == len(medium_archive.files)


def test_to_orthanc_through_the_python_api(
    cluster: LocalCluster, medium_archive: SynthArchive, orthanc: Orthanc, tmp_path: Path
) -> None:
    import dicom_fastsend as fs

    peer = fs.PeerConfig(LOOPBACK, orthanc.dicom_port, orthanc.aet)
    config = fs.SendConfig(
        peer=peer,
        inputs=(medium_archive.root,),
        recursive=True,
        log_dir=tmp_path / "logs",
        cluster=cluster.scheduler_address,
        max_ops=4,
    )
    seen: list[str] = []
    summary = fs.send(config, lambda result: seen.append(result.path))
    assert summary.exit_code == 0, summary.events
    assert orthanc.sop_instance_uids() == medium_archive.uids
    assert int(orthanc.statistics()["CountInstances"]) == len(medium_archive.files)
    assert sorted(seen) == sorted(str(p) for p in medium_archive.files)
    written = load_summary(tmp_path / "logs")
    stored = assert_nothing_lost(written, seen, tmp_path / "logs")
    assert journal_stored(written, peer) == stored

    # Resume: the coordinator's journal skips everything on the second run.
    again = fs.send(config)
    assert again.count(Outcome.SKIPPED) == len(medium_archive.files)
    assert int(orthanc.statistics()["CountInstances"]) == len(medium_archive.files)


def test_a_lost_dask_worker_loses_nothing(tmp_path: Path) -> None:
    archive = make_archive(
        tmp_path / "archive", explicit_studies=10, implicit_studies=2, instances_per_study=5
    )
    logs = tmp_path / "logs"
    # 30 ms per C-STORE-RSP: 60 files over 2 workers take about 1 s, time to kill one.
    with (
        start_cluster() as cluster,
        Client(cluster.scheduler_address) as client,
        Sink(ae_title="SINK", response_delay=0.03) as sink,
    ):
        pids: dict[str, int] = client.run(os.getpid)
        process = start_slow_send(archive, sink, cluster.scheduler_address, logs, wait_for=10)
        victim = min(pids.values())
        os.kill(victim, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
        received = Counter(sink.stats.received_uids)
    assert process.returncode == 0, stderr.decode()
    assert set(received) == archive.uids
    summary = load_summary(logs)
    stored = assert_nothing_lost(summary, [str(p) for p in archive.files], logs)
    assert len(stored) == len(archive.files)
    rerun = [t for t in summary["cluster"]["tasks"] if len(t["attempts"]) > 1]
    assert rerun, "no task ran again after the kill"
    assert any(a["pid"] == victim for t in rerun for a in t["attempts"])
    assert any("was lost" in e for e in summary["events"])
    assert any(w["exit"] == "died (Dask worker lost)" for w in summary["workers"])
    # Files the lost worker had stored but not yet published may come twice;
    # that a rerun skips the published ones is tested directly below.
    peer = PeerConfig(LOOPBACK, sink.port, "SINK")
    assert journal_stored(summary, peer) == stored


def test_a_task_dask_gives_up_on_is_reported_failed_file_by_file(tmp_path: Path) -> None:
    archive = make_archive(
        tmp_path / "archive", explicit_studies=10, implicit_studies=2, instances_per_study=5
    )
    logs = tmp_path / "logs"
    # allowed-failures 0: the first lost worker makes its task fail (KilledWorker)
    # instead of running again, as after repeated losses with the default of 3.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        start_cluster() as cluster,
        Client(cluster.scheduler_address) as client,
        Sink(ae_title="SINK", response_delay=0.03) as sink,
    ):
        pids: dict[str, int] = client.run(os.getpid)
        process = start_slow_send(archive, sink, cluster.scheduler_address, logs, wait_for=10)
        os.kill(min(pids.values()), signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
        received = set(sink.stats.received_uids)
    assert process.returncode == 1, stderr.decode()
    summary = load_summary(logs)
    stored = assert_nothing_lost(summary, [str(p) for p in archive.files], logs)
    failed = summary["failures"]
    assert failed and len(stored) + len(failed) == len(archive.files)
    assert all("failed: KilledWorker: Dask workers died" in f["reason"] for f in failed), failed[0][
        "reason"
    ]
    assert {archive.sop_instance_uids[Path(p)] for p in stored} <= received
    assert [t for t in summary["cluster"]["tasks"] if t["state"] == "failed"]


def test_a_file_a_worker_cannot_read_is_a_per_file_failure(
    cluster: LocalCluster, tmp_path: Path, sink: Sink
) -> None:
    archive = make_archive(tmp_path / "archive", explicit_studies=2, implicit_studies=0)
    # Read by the coordinator (with --cluster it reads the headers), gone by
    # the time a worker opens it: as a worker without the coordinator's
    # storage mounted would find it.
    missing = archive.files[0]
    config = SendConfig(
        peer=PeerConfig(LOOPBACK, sink.port, "SINK"),
        inputs=(archive.root,),
        recursive=True,
        log_dir=tmp_path / "logs",
        cluster=cluster.scheduler_address,
        retries=0,
    )

    def dispatched(batch: Batch) -> None:
        if str(missing) in {f.path for f in batch.files}:
            missing.unlink()

    summary = Coordinator(config, Hooks(dispatched=dispatched)).run()
    assert summary.exit_code == 1
    [failed] = [r for r in summary.noted if r.outcome is Outcome.FAILED]
    assert failed.path == str(missing)
    assert "cannot read file" in failed.reason
    assert "every Dask worker must see the files" in failed.reason
    assert summary.count(Outcome.STORED) == len(archive.files) - 1
    assert sink.stats.instances == len(archive.files) - 1


def test_an_unreachable_scheduler_exits_3_naming_it(archive: SynthArchive) -> None:
    address = f"tcp://{LOOPBACK}:{free_port()}"
    run = fastsend(
        *send_args(LOOPBACK, free_port(), "ANY", str(archive.root)),
        "--cluster", address, "--connect-timeout", "2",
    )  # fmt: skip
    assert run.returncode == 3, run.output
    assert f"cannot reach the Dask scheduler at {address}" in run.stderr


def test_without_distributed_the_message_says_what_to_install(archive: SynthArchive) -> None:
    # A None entry in sys.modules makes `import distributed` fail, as if not installed.
    code = (
        "import sys; sys.modules['distributed'] = None; "
        "import importlib.util; importlib.util.find_spec = lambda name, *a: None; "
        "from dicom_fastsend.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code,
         *send_args(LOOPBACK, free_port(), "ANY", str(archive.root)),
         "--cluster", "tcp://127.0.0.1:8786"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "pip install 'dicom-fastsend[cluster]'" in result.stderr


@pytest.mark.parametrize("interrupts", [1, 2])
def test_ctrl_c_stops_the_cluster_tasks_and_accounts_for_every_file(
    cluster: LocalCluster, tmp_path: Path, interrupts: int
) -> None:
    archive = make_archive(
        tmp_path / "archive", explicit_studies=10, implicit_studies=2, instances_per_study=5
    )
    logs = tmp_path / "logs"
    with (
        Client(cluster.scheduler_address) as client,
        Sink(ae_title="SINK", response_delay=0.05) as sink,
    ):
        process = start_slow_send(archive, sink, cluster.scheduler_address, logs, wait_for=6)
        process.send_signal(signal.SIGINT)
        # Python runs a signal's handler once for signals that arrive before it
        # gets to run: the second Ctrl-C must come after the first was handled.
        wait_until(lambda: log_says(logs, "interrupted (Ctrl-C)"), 30, "the Ctrl-C in the log")
        if interrupts == 2:
            process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        at_exit = sink.stats.instances
        # The second Ctrl-C cancels tasks that Dask cannot interrupt: each must
        # still end after its file in flight, not go on storing meanwhile.
        wait_until(
            lambda: tasks_running(client) == 0,
            30,
            "the cluster's workers to end their tasks",
            state=lambda: (
                f"{tasks_running(client)} tasks running, "
                f"{sink.stats.instances - at_exit} files stored since fastsend exited"
            ),
        )
        received = set(sink.stats.received_uids)
        after = sink.stats.instances
    assert process.returncode == 130, stderr.decode()
    assert after - at_exit <= (0 if interrupts == 1 else 2)  # a file in flight per worker
    summary = load_summary(logs)
    assert summary["interrupted"] is True
    stored = assert_nothing_lost(summary, [str(p) for p in archive.files], logs)
    assert 0 < len(stored) < len(archive.files)
    assert all(
        e["reason"].startswith("not sent: the run was interrupted") for e in summary["skipped"]
    )
    if interrupts == 1:
        # What the summary calls stored is what the sink received: the files in
        # flight finished and were reported.
        assert {archive.sop_instance_uids[Path(p)] for p in stored} == received


def test_a_rerun_sends_only_the_files_without_an_outcome(
    cluster: LocalCluster, archive: SynthArchive, sink: Sink
) -> None:
    # What a first attempt published before its worker died: two outcomes.
    infos = [read_header(p) for p in archive.files]
    published = [FileResult.of(info, Outcome.STORED, "", worker=0) for info in infos[:2]]
    peer = PeerConfig(LOOPBACK, sink.port, "SINK")
    task = ClusterTask(
        0,
        (Batch(0, tuple(infos)),),
        WorkerConfig(worker=0, peer=peer),
        topic="fastsend-test-rerun-events",
        progress="fastsend-test-rerun-progress",
        stop="fastsend-test-rerun-stop",
    )
    with Client(cluster.scheduler_address) as client:
        Variable(task.progress, client=client).set(pickle.dumps(published))
        try:
            report = client.submit(run_task, task, pure=False).result(timeout=60)
        finally:
            Variable(task.progress, client=client).delete()
    assert sorted(r.path for r in report.results) == sorted(i.path for i in infos)
    assert [r.outcome for r in report.results[:2]] == [Outcome.STORED] * 2  # carried over
    sent = {i.sop_instance_uid for i in infos[2:]}
    assert set(sink.stats.received_uids) == sent and sink.stats.instances == len(sent)
