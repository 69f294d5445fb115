"""Live metrics (``--metrics-port``): a Prometheus text endpoint served by the coordinator.

The values are read at scrape time from what the coordinator already keeps
(the SendSummary, its batch book, the walk), through a custom collector:
nothing is counted twice and a file's outcome costs nothing more. The
latency histogram folds in the summary's new latencies at each scrape.

The text is prometheus-client's exposition format (``generate_latest``);
the HTTP side is a small non-blocking server driven by the coordinator's own
loop (``serve``) rather than prometheus-client's threaded one, because the
coordinator forks its workers and must stay single-threaded to do so safely
(local.py). A scrape is answered within the loop's longest wait (0.2 s).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ..io.transport import RequestServer, TransportError
from .results import Outcome, SendSummary

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

INSTALL_HINT: Final = "pip install 'dicom-fastsend[metrics]'"
# C-STORE round trips, in seconds: from a small image on a LAN to a large
# multi-frame over a WAN.
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# The rate gauge averages over this many seconds.
RATE_WINDOW: Final = 10.0
# A connection that has not sent its request by then is closed.
REQUEST_TIMEOUT: Final = 10.0
MAX_REQUEST: Final = 16384


class MetricsError(Exception):
    """The endpoint cannot be served: prometheus-client missing, or the port taken."""


class Live(msgspec.Struct, frozen=True):
    """What the summary does not hold: the coordinator's state now."""

    in_flight: int  # files in batches handed to executors and not reported
    remaining: int  # files found with no outcome yet
    paused: bool
    rate_limit_bytes: float  # 0: none
    finished: bool  # the run is over (the endpoint lingers)


class SendCollector:
    """A prometheus-client collector over a SendSummary and the coordinator's Live state."""

    def __init__(self, summary: SendSummary, live: Callable[[], Live]) -> None:
        self._summary = summary
        self._live = live
        self._folded = 0  # latencies folded into the buckets so far
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: +Inf
        self._latency_sum = 0.0
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self) -> None:
        """Note the bytes sent now, for the rate gauge (the coordinator calls it as it loops)."""
        now = time.monotonic()
        if self._samples and now - self._samples[-1][0] < 0.5:
            return
        self._samples.append((now, self._summary.bytes_sent))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()

    def rate(self) -> float:
        self.sample()
        if len(self._samples) < 2:
            return 0.0
        (start, sent_then), (end, sent_now) = self._samples[0], self._samples[-1]
        return (sent_now - sent_then) / (end - start) if end > start else 0.0

    def _fold_latencies(self) -> None:
        latencies = self._summary.latencies
        for seconds in latencies[self._folded :]:
            self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum += seconds
        self._folded = len(latencies)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        summary = self._summary
        live = self._live()
        files = CounterMetricFamily(
            "fastsend_files", "Files with an outcome, by outcome.", labels=["outcome"]
        )
        for outcome in Outcome:
            files.add_metric([outcome.value], summary.count(outcome))
        yield files
        yield CounterMetricFamily(
            "fastsend_files_already_stored",
            "Files skipped because the journal records them as stored (part of skipped).",
            value=summary.already_stored,
        )
        yield CounterMetricFamily(
            "fastsend_bytes_sent", "Bytes of the files stored.", value=summary.bytes_sent
        )
        yield CounterMetricFamily(
            "fastsend_retries",
            "Attempts repeated after a transient failure.",
            value=summary.retries,
        )
        associations = CounterMetricFamily(
            "fastsend_associations", "Associations, by result.", labels=["result"]
        )
        for result, count in (
            ("opened", summary.associations_opened),
            ("rejected", summary.associations_rejected),
            ("failed", summary.associations_failed),
            ("aborted", summary.associations_aborted),
        ):
            associations.add_metric([result], count)
        yield associations
        yield GaugeMetricFamily(
            "fastsend_files_in_flight",
            "Files handed to workers and not reported yet.",
            value=live.in_flight,
        )
        yield GaugeMetricFamily(
            "fastsend_files_remaining",
            "Files found so far that have no outcome yet.",
            value=live.remaining,
        )
        yield GaugeMetricFamily(
            "fastsend_send_rate_bytes_per_second",
            f"Bytes stored per second over the last {RATE_WINDOW:g} s.",
            value=self.rate(),
        )
        yield GaugeMetricFamily(
            "fastsend_rate_limit_bytes_per_second",
            "The rate limit in force (--max-rate or the --schedule window); 0: none.",
            value=live.rate_limit_bytes,
        )
        yield GaugeMetricFamily(
            "fastsend_paused", "1 while the run is paused (schedule or SIGUSR1).", value=live.paused
        )
        yield GaugeMetricFamily(
            "fastsend_run_finished",
            "1 once the run is over (the endpoint answers for --metrics-linger).",
            value=live.finished,
        )
        self._fold_latencies()
        cumulative = []
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self._buckets, strict=True):
            total += count
            cumulative.append((_bound(bound), total))
        yield HistogramMetricFamily(
            "fastsend_store_latency_seconds",
            "C-STORE round trips answered: request sent to response read.",
            buckets=cumulative,
            sum_value=self._latency_sum,
        )


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class MetricsServer:
    """A single-threaded HTTP endpoint: ``serve()`` handles whatever is ready, never waits.

    The sockets are io/transport.py's (RequestServer); this class only
    answers the requests.
    """

    def __init__(self, address: str, port: int, collector: SendCollector) -> None:
        try:
            from prometheus_client import CollectorRegistry
        except ImportError:
            raise MetricsError(
                f"--metrics-port needs prometheus-client, which is not installed. "
                f"Install it with: {INSTALL_HINT}"
            ) from None
        self._collector = collector
        self._registry: Any = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)
        try:
            self._server = RequestServer(address, port, MAX_REQUEST, REQUEST_TIMEOUT)
        except TransportError as exc:
            raise MetricsError(
                f"cannot serve metrics on {address}:{port}: {exc}; "
                "choose another --metrics-port (or --metrics-address)"
            ) from None
        self.port = self._server.port
        self.address = address

    def serve(self, timeout: float = 0.0) -> None:
        """Accept, read requests and write answers that are ready; wait at most ``timeout``."""
        self._collector.sample()
        self._server.serve(timeout, self._answer)

    def _answer(self, request: bytes) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        line = request.split(b"\r\n", 1)[0].split()
        method = line[0] if line else b""
        target = line[1].split(b"?", 1)[0] if len(line) > 1 else b""
        if method not in (b"GET", b"HEAD"):
            return _http(405, "text/plain", b"only GET\n")
        if target not in (b"/metrics", b"/"):
            return _http(404, "text/plain", b"the metrics are at /metrics\n")
        body = generate_latest(self._registry)
        return _http(200, CONTENT_TYPE_LATEST, body, head=method == b"HEAD")

    def close(self) -> None:
        self._server.close()


def _http(status: int, content_type: str, body: bytes, head: bool = False) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    header = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    return header if head else header + body
