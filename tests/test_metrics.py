"""--metrics-port: the collector over a summary, the endpoint over a real socket, and
real runs (-P 2, and --cluster) scraped while they send and once they are over."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dicom_fastsend.engine.metrics import (
    LATENCY_BUCKETS,
    Live,
    MetricsError,
    MetricsServer,
    SendCollector,
)
from dicom_fastsend.engine.results import FileResult, Outcome, SendSummary
from dicom_fastsend.sink import Sink
from fastsend_cli import send_args
from peers import PynetdicomSCP, free_port, make_archive
from require import require_module

prometheus_client = require_module("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def scrape(port: int, path: str = "/metrics") -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.headers.get_content_type() == "text/plain"
        return parse(response.read().decode())


# ---------------------------------------------------------------- the collector


def stored(seconds: float, size: int = 1000) -> FileResult:
    return FileResult("/x", Outcome.STORED, status=0, bytes_sent=size, seconds=seconds)


def test_the_collector_reads_the_summary_at_each_scrape() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    summary = SendSummary()
    live = Live(in_flight=3, remaining=7, paused=True, rate_limit_bytes=2e6, finished=False)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SendCollector(summary, lambda: live))
    summary.add(stored(0.004))
    summary.add(FileResult("/y", Outcome.FAILED, "no", status=0xA700, seconds=0.2))
    summary.add_already_stored(5)
    summary.retries = 2
    summary.associations_opened = 4
    summary.associations_aborted = 1
    first = parse(generate_latest(registry).decode())
    assert value(first, "fastsend_files_total", outcome="stored") == 1
    assert value(first, "fastsend_files_total", outcome="failed") == 1
    assert value(first, "fastsend_files_total", outcome="skipped") == 5
    assert value(first, "fastsend_files_already_stored_total") == 5
    assert value(first, "fastsend_bytes_sent_total") == 1000
    assert value(first, "fastsend_retries_total") == 2
    assert value(first, "fastsend_associations_total", result="opened") == 4
    assert value(first, "fastsend_associations_total", result="aborted") == 1
    assert value(first, "fastsend_files_in_flight") == 3
    assert value(first, "fastsend_files_remaining") == 7
    assert value(first, "fastsend_paused") == 1
    assert value(first, "fastsend_rate_limit_bytes_per_second") == 2e6
    assert value(first, "fastsend_store_latency_seconds_count") == 2
    assert value(first, "fastsend_store_latency_seconds_bucket", le="0.005") == 1
    assert value(first, "fastsend_store_latency_seconds_bucket", le="0.25") == 2
    # Latencies that came after the last scrape are folded in at the next one.
    summary.add(stored(0.004))
    second = parse(generate_latest(registry).decode())
    assert value(second, "fastsend_store_latency_seconds_count") == 3
    assert value(second, "fastsend_store_latency_seconds_bucket", le="0.005") == 2
    assert value(second, "fastsend_store_latency_seconds_bucket", le="+Inf") == 3
    assert value(second, "fastsend_store_latency_seconds_sum") == pytest.approx(0.208, rel=1e-5)
    assert len(LATENCY_BUCKETS) + 1 == sum(
        1 for name, _ in second if name == "fastsend_store_latency_seconds_bucket"
    )


def idle_server(port: int = 0) -> MetricsServer:
    live = Live(0, 0, False, 0.0, False)
    return MetricsServer("127.0.0.1", port, SendCollector(SendSummary(), lambda: live))


def test_the_endpoint_answers_over_a_socket_and_only_at_metrics() -> None:
    server = idle_server()
    try:
        result: dict[str, Any] = {}

        def fetch(path: str) -> None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{server.port}{path}", timeout=5
                ) as response:
                    result[path] = response.status
            except urllib.error.HTTPError as exc:
                result[path] = exc.code

        import threading

        for path in ("/metrics", "/nothing"):
            thread = threading.Thread(target=fetch, args=(path,))
            thread.start()
            while thread.is_alive():
                server.serve(0.05)
            thread.join()
        assert result == {"/metrics": 200, "/nothing": 404}
    finally:
        server.close()


def test_a_port_in_use_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError, match=f"127.0.0.1:{port}.*--metrics-port"):
            idle_server(port)


def test_without_prometheus_client_the_message_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MetricsError, match=r"pip install 'dicom-fastsend\[metrics\]'"):
        idle_server()


# ---------------------------------------------------------------- real runs


def scrape_a_run(command: list[str], port: int) -> tuple[list[Samples], Samples, Path]:
    """Scrape while the run goes and once it is over; returns (during, final, log dir)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    during: list[Samples] = []
    final: Samples | None = None
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                samples = scrape(port)
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)  # not listening yet
                continue
            if value(samples, "fastsend_run_finished"):
                final = samples
                break
            during.append(samples)
            time.sleep(0.1)
        # The run is over and lingers: Ctrl-C ends the linger at once.
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, (stdout + stderr).decode()
    assert final is not None, "no scrape once the run was over"
    return during, final, Path(command[command.index("--log-dir") + 1])


def assert_totals_equal_the_summary(final: Samples, log_dir: Path) -> dict[str, Any]:
    (path,) = log_dir.glob("fastsend_summary_*.json")
    summary: dict[str, Any] = json.loads(path.read_text())
    counts = summary["counts"]
    for outcome in ("stored", "warning", "failed", "skipped"):
        assert value(final, "fastsend_files_total", outcome=outcome) == counts[outcome]
    assert value(final, "fastsend_files_already_stored_total") == counts["already_stored"]
    assert value(final, "fastsend_bytes_sent_total") == summary["bytes_sent"]
    assert value(final, "fastsend_retries_total") == summary["retries"]
    for result in ("opened", "rejected", "failed", "aborted"):
        assert (
            value(final, "fastsend_associations_total", result=result)
            == summary["associations"][result]
        )
    assert value(final, "fastsend_store_latency_seconds_count") == summary["latency_ms"]["count"]
    assert value(final, "fastsend_files_in_flight") == 0
    assert value(final, "fastsend_files_remaining") == 0
    return summary


def slow_success(dataset: object) -> int:
    """A slow receiver: 40 ms per C-STORE, then Success."""
    time.sleep(0.04)
    return 0x0000


def test_the_endpoint_answers_while_a_send_runs_and_ends_with_the_summary(
    tmp_path: Path,
) -> None:
    archive = make_archive(tmp_path / "in", explicit_studies=8, implicit_studies=2)
    port = free_port()
    with PynetdicomSCP(status=slow_success) as scp:
        command = [
            sys.executable, "-m", "dicom_fastsend",
            *send_args(scp.host, scp.port, scp.ae_title, str(archive.root)),
            "-P", "2", "--log-dir", str(tmp_path / "logs"), "--no-progress",
            "--metrics-port", str(port), "--metrics-linger", "30",
        ]  # fmt: skip
        during, final, log_dir = scrape_a_run(command, port)
    # 30 files, 40 ms each, on two associations: some 0.6 s of scrapes at 0.1 s.
    assert any(
        value(s, "fastsend_files_in_flight") > 0 and value(s, "fastsend_files_remaining") > 0
        for s in during
    ), during
    summary = assert_totals_equal_the_summary(final, log_dir)
    assert summary["counts"]["stored"] == len(archive.files)


def test_with_cluster_the_coordinator_serves_the_totals(tmp_path: Path) -> None:
    distributed = require_module("distributed")
    import logging

    archive = make_archive(tmp_path / "in", explicit_studies=4, implicit_studies=1)
    port = free_port()
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        ) as cluster,
        PynetdicomSCP(status=slow_success) as scp,
    ):
        command = [
            sys.executable, "-m", "dicom_fastsend",
            *send_args(scp.host, scp.port, scp.ae_title, str(archive.root)),
            "--cluster", cluster.scheduler_address,
            "--log-dir", str(tmp_path / "logs"), "--no-progress",
            "--metrics-port", str(port), "--metrics-linger", "30",
        ]  # fmt: skip
        during, final, log_dir = scrape_a_run(command, port)
    assert during, "no scrape while the run went on"
    summary = assert_totals_equal_the_summary(final, log_dir)
    assert summary["counts"]["stored"] == len(archive.files)


def test_a_metrics_port_in_use_stops_the_run_before_sending(tmp_path: Path) -> None:
    from fastsend_cli import fastsend

    archive = make_archive(tmp_path / "in", explicit_studies=1, implicit_studies=0)
    with socket.socket() as taken, Sink(ae_title="SINK") as sink:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = fastsend(
            *send_args("127.0.0.1", sink.port, "SINK", str(archive.root)),
            "--metrics-port",
            str(port),
        )
        assert run.returncode == 3, run.output
        assert f"cannot serve metrics on 127.0.0.1:{port}" in run.stderr, run.stderr
        assert sink.stats.instances == 0
