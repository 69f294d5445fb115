"""Scale benchmark (issue 14): fastsend against DCMTK storescu on N small files.

    python bench/scale.py                         # 100,000 files, warm cache, 3 runs
    python bench/scale.py --cold                  # the same, caches dropped before each command
    python bench/scale.py --files 1000000 --runs 1

The files are CT images of 64x64x16 bit, 9.2 KB each, 100 to a study, written
from one template with patched UIDs (bench/scale_data.py) and kept under
--data for the next run. The receiver is DCMTK at its best,
`TCP_NODELAY=1 storescp --fork --ignore --max-pdu 131072`, on 127.0.0.1. The
senders, run in turn in each of --runs rounds:

- DCMTK `storescu --max-pdu 131072 +sd +r` (with TCP_NODELAY=1), and once per
  round `storescu -v` stopped at its first "Received Store Response", for its
  time to the first stored file (-v costs storescu about 30% more time, so
  the timed run is without it);
- `fastsend send -P N` for each N of --processes, each with a new --log-dir;
- the same command again on the --log-dir of the largest -P: the rerun of a
  finished migration, where everything is already stored.

fastsend is driven only through its command line (`python -m dicom_fastsend
send`) and read back only through its session log and JSON summary, so this
script measures whatever engine the tree holds. For each command: wall time
from before the start of the process to its exit; files/s; time to the first
stored file (fastsend: the time stamp of the first `stored` line of its
session log; storescu: the probe above); the peak RSS of every process of the
sender's tree, sampled every 10 ms; CPU time (user + system) of the whole
tree from wait4(2), and per file. With --cold, `sync; echo 3 >
/proc/sys/vm/drop_caches` (root only) runs before every command.

Times are medians over the rounds, peak RSS the largest of the rounds, ratios
the median of each round's ratio. A Markdown table naming the machine goes to
stdout, with a check of the issue's targets; the figures are merged into --out
(bench/results_scale.json), one entry per file count and cache state, so the
1 M run can compare its memory with the 100k run's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_data import GeneratedSet, SetShape, generate  # noqa: E402
from scale_measure import (  # noqa: E402
    LOOPBACK,
    MAX_PDU,
    RECEIVER_AE,
    Measured,
    ProcessPeak,
    dcmtk_environment,
    describe_machine,
    drop_caches,
    find_dcmtk,
    machine,
    run_measured,
    stop_group,
    storescp,
    tail,
    warm_up,
)

REPO = Path(__file__).resolve().parent.parent
STORESCU = "DCMTK storescu"
RERUN = "rerun"
MB = 1e6
# storescu -v prints this line when a C-STORE-RSP arrives (DCMTK 3.6.x, storescu.cc).
STORESCU_RESPONSE = "Received Store Response"

# The targets for this machine (issue 14).
TARGET_FIRST_STORE_SECONDS = 2.0
TARGET_PEAK_RSS_BYTES = 300 * MB
TARGET_RSS_GROWTH = 1.3
TARGET_COLD_SPEEDUP = 1.5
TARGET_RERUN_SHARE = 0.05

Say = Callable[[str], None]


# ====================================================================== senders


@dataclass(slots=True)
class RunResult:
    """One sender's run: what run_measured saw, plus what the sender reports."""

    sender: str
    round: int
    seconds: float
    files_per_second: float
    first_store_seconds: float | None
    cpu_seconds: float
    cpu_us_per_file: float
    peak_rss_bytes: int
    peak_anon_bytes: int
    processes: list[ProcessPeak]
    returncode: int
    stored: int | None
    found: int | None = None
    skipped: int | None = None
    problem: str | None = None
    load_average: tuple[float, float, float] = field(default_factory=lambda: os.getloadavg())

    @property
    def ok(self) -> bool:
        return self.problem is None


def _result(
    sender: str,
    number: int,
    files: int,
    measured: Measured,
    first_store: float | None,
    stored: int | None,
    problem: str | None,
    found: int | None = None,
    skipped: int | None = None,
) -> RunResult:
    cpu = measured.cpu_user + measured.cpu_system
    if measured.timed_out:
        problem = f"killed after the timeout; {problem or ''}".rstrip("; ")
    return RunResult(
        sender=sender,
        round=number,
        seconds=measured.seconds,
        files_per_second=files / measured.seconds,
        first_store_seconds=first_store,
        cpu_seconds=cpu,
        cpu_us_per_file=cpu / files * 1e6,
        peak_rss_bytes=max((p.rss_bytes for p in measured.processes), default=0),
        peak_anon_bytes=max((p.anon_bytes for p in measured.processes), default=0),
        processes=measured.processes,
        returncode=measured.returncode,
        stored=stored,
        problem=problem,
        found=found,
        skipped=skipped,
    )


@dataclass(frozen=True, slots=True)
class Bench:
    """What every command of one benchmark shares."""

    tree: Path
    files: int
    port: int
    work: Path
    storescu: str | None
    python: str
    cold: bool
    timeout: float | None

    def prepare(self) -> None:
        """Before each command: drop the caches in a cold run."""
        if self.cold:
            problem = drop_caches()
            if problem:
                raise RuntimeError(problem)


def storescu_command(bench: Bench, *options: str) -> list[str]:
    assert bench.storescu is not None
    return [bench.storescu, *options, "--max-pdu", str(MAX_PDU), "+sd", "+r",
            "-aec", RECEIVER_AE, LOOPBACK, str(bench.port), str(bench.tree)]  # fmt: skip


def run_storescu(bench: Bench, number: int) -> RunResult:
    bench.prepare()
    output = bench.work / f"storescu-{number}.out"
    measured = run_measured(
        storescu_command(bench),
        role="storescu",
        output=output,
        env=dcmtk_environment(),
        timeout=bench.timeout,
    )
    # storescu halts at the first unsuccessful store (no -nh) and exits non-zero:
    # exit 0 means every file it found was stored.
    problem = None
    if measured.returncode != 0:
        problem = f"storescu exited {measured.returncode}: {tail(output)}"
    stored = bench.files if measured.returncode == 0 else None
    return _result(STORESCU, number, bench.files, measured, None, stored, problem)


def probe_storescu_first_store(bench: Bench) -> float | None:
    """Seconds from starting `storescu -v` to its first "Received Store Response".

    The probe is stopped there: -v slows storescu down by about 30%, so the
    timed run goes without it, and a second full run would double the time.
    """
    bench.prepare()
    started = time.time()
    process = subprocess.Popen(
        storescu_command(bench, "-v"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dcmtk_environment(),
        start_new_session=True,
        text=True,
    )
    first: float | None = None
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if STORESCU_RESPONSE in line:
                first = time.time() - started
                break
    finally:
        stop_group(process)
        if process.stderr:
            process.stderr.close()
    return first


def fastsend_command(bench: Bench, processes: int, log_dir: Path) -> list[str]:
    return [bench.python, "-m", "dicom_fastsend", "send", "-i", str(bench.tree), "-r",
            "-a", RECEIVER_AE, "-H", LOOPBACK, "-p", str(bench.port), "-P", str(processes),
            "--log-dir", str(log_dir), "--no-progress"]  # fmt: skip


def first_stored_time(log: Path) -> float | None:
    """Wall-clock time (epoch seconds) of the first `stored` line of a session log.

    Lines are `<ISO 8601 time> <LEVEL> <message>`; a stored file's message
    starts with `stored <path>`.
    """
    try:
        with log.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                parts = line.split(None, 2)
                if len(parts) == 3 and parts[2].startswith("stored "):
                    stamp = dt.datetime.fromisoformat(parts[0])
                    if stamp.tzinfo is None:
                        stamp = stamp.astimezone()
                    return stamp.timestamp()
    except (OSError, ValueError):
        return None
    return None


def run_fastsend(bench: Bench, number: int, processes: int, log_dir: Path, label: str) -> RunResult:
    """One `fastsend send`; a rerun when `log_dir` already holds a finished send."""
    bench.prepare()
    log_dir.mkdir(parents=True, exist_ok=True)
    before = set(log_dir.glob("fastsend_summary_*.json"))
    output = bench.work / f"{label.replace(' ', '_')}-{number}.out"
    measured = run_measured(
        fastsend_command(bench, processes, log_dir),
        role="coordinator",
        output=output,
        timeout=bench.timeout,
    )
    summaries = sorted(set(log_dir.glob("fastsend_summary_*.json")) - before)
    if len(summaries) != 1:
        missing = f"{len(summaries)} new summaries in {log_dir}; exit {measured.returncode}: "
        return _result(label, number, bench.files, measured, None, None, missing + tail(output))
    summary = json.loads(summaries[0].read_text())
    counts = summary.get("counts", {})
    stored = int(counts.get("stored", 0)) + int(counts.get("warning", 0))
    skipped = int(counts.get("skipped", 0))
    found = int(counts.get("found", 0))
    first = first_stored_time(log_dir / f"fastsend_{summary.get('session_id')}.log")
    rerun = label == RERUN
    problem: str | None = None
    if measured.returncode != 0 or summary.get("exit_code") != 0:
        problem = f"fastsend exited {measured.returncode}: {tail(output)}"
    elif rerun and (skipped != bench.files or stored != 0):
        problem = f"the rerun stored {stored} and skipped {skipped}, not 0 and {bench.files}"
    elif not rerun and stored != bench.files:
        problem = f"fastsend stored {stored} of {bench.files} files: {tail(output)}"
    return _result(
        label,
        number,
        bench.files,
        measured,
        None if first is None else first - measured.started_wall,
        stored,
        problem,
        found=found,
        skipped=skipped,
    )


# ====================================================================== summary


def fastsend_label(processes: int) -> str:
    return f"fastsend -P {processes}"


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


@dataclass(slots=True)
class Row:
    """One sender over all rounds."""

    sender: str
    runs: list[RunResult]
    first_store_probe: list[float | None] = field(default_factory=list)

    @property
    def good(self) -> list[RunResult]:
        return [run for run in self.runs if run.ok]

    def median(self, name: str) -> float | None:
        return _median([getattr(run, name) for run in self.good])

    @property
    def first_store_seconds(self) -> float | None:
        if self.first_store_probe:
            return _median(self.first_store_probe)
        return self.median("first_store_seconds")

    def roles(self) -> list[str]:
        return sorted({p.role for run in self.runs for p in run.processes})

    def peak(self, role: str | None = None) -> int:
        """Largest RSS over the rounds of the processes of `role` (None: any)."""
        return max(
            (
                p.rss_bytes
                for run in self.runs
                for p in run.processes
                if role is None or p.role == role
            ),
            default=0,
        )

    def cpu_us_per_file(self, role: str, files: int) -> float | None:
        """Median over the rounds of the sampled CPU of the processes of `role`, per file."""
        return _median(
            [
                sum(p.cpu_seconds for p in run.processes if p.role == role) / files * 1e6
                for run in self.good
            ]
        )

    def as_dict(self, files: int) -> dict[str, Any]:
        seconds = self.median("seconds")
        return {
            "sender": self.sender,
            "seconds": seconds,
            "files_per_second": files / seconds if seconds else None,
            "first_store_seconds": self.first_store_seconds,
            "cpu_us_per_file": self.median("cpu_us_per_file"),
            "cpu_us_per_file_by_role_sampled": {
                role: self.cpu_us_per_file(role, files) for role in self.roles()
            },
            "peak_rss_bytes": self.peak(),
            "peak_rss_bytes_by_role": {role: self.peak(role) for role in self.roles()},
            "failed_runs": len(self.runs) - len(self.good),
            "runs": [
                {**asdict(run), "processes": [asdict(p) for p in run.processes]}
                for run in self.runs
            ],
            **(
                {"first_store_probe_seconds": self.first_store_probe}
                if self.first_store_probe
                else {}
            ),
        }


def per_round_ratio(numerator: Row, denominator: Row) -> float | None:
    """Median over the rounds of numerator seconds / denominator seconds in the same round."""
    by_round = {run.round: run.seconds for run in denominator.good}
    ratios = [run.seconds / by_round[run.round] for run in numerator.good if run.round in by_round]
    return statistics.median(ratios) if ratios else None


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: str
    target: str
    met: bool | None  # None: not measured in this run

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_targets(
    rows: dict[str, Row],
    files: int,
    cold: bool,
    largest: int,
    baseline: dict[str, Any] | None,
    baseline_files: int | None,
) -> list[Target]:
    targets: list[Target] = []
    senders = [rows[fastsend_label(p)] for p in sorted(_processes_in(rows))]
    scope = f"{files:,} files, {'cold' if cold else 'warm'}"
    firsts = [(row.sender, row.first_store_seconds) for row in senders]
    measured_firsts = [(name, value) for name, value in firsts if value is not None]
    if measured_firsts:
        name, worst = max(measured_firsts, key=lambda item: item[1])
        targets.append(
            Target(
                f"first stored file, slowest fastsend ({name}; set for 1 M files) [{scope}]",
                f"{worst:.2f} s",
                f"<= {TARGET_FIRST_STORE_SECONDS:.0f} s",
                worst <= TARGET_FIRST_STORE_SECONDS,
            )
        )
    fastsend_rows = [*senders, *([rows[RERUN]] if RERUN in rows else [])]
    peak = max((row.peak() for row in fastsend_rows), default=0)
    if peak:
        targets.append(
            Target(
                f"peak RSS of any fastsend process [{scope}]",
                f"{peak / MB:.0f} MB",
                f"<= {TARGET_PEAK_RSS_BYTES / MB:.0f} MB",
                peak <= TARGET_PEAK_RSS_BYTES,
            )
        )
    if peak and baseline and baseline_files:
        base = int(baseline.get("fastsend_peak_rss_bytes") or 0)
        if base:
            growth = peak / base
            targets.append(
                Target(
                    f"peak RSS at {files:,} / at {baseline_files:,} files",
                    f"{growth:.2f}x ({peak / MB:.0f} / {base / MB:.0f} MB)",
                    f"<= {TARGET_RSS_GROWTH}x",
                    growth <= TARGET_RSS_GROWTH,
                )
            )
    elif peak and files > 100_000:
        targets.append(
            Target(
                "peak RSS growth over the 100k run",
                "not measured (no 100k result in --out)",
                f"<= {TARGET_RSS_GROWTH}x",
                None,
            )
        )
    top = rows.get(fastsend_label(largest))
    if STORESCU in rows and top is not None:
        ratio = per_round_ratio(rows[STORESCU], top)
        if ratio is not None:
            targets.append(
                Target(
                    f"{top.sender} files/s / storescu files/s (set for 100k, cold) [{scope}]",
                    f"{ratio:.2f}x",
                    f">= {TARGET_COLD_SPEEDUP}x" + ("" if cold else " (cold only)"),
                    ratio >= TARGET_COLD_SPEEDUP if cold else None,
                )
            )
    if RERUN in rows and top is not None:
        share = per_round_ratio(rows[RERUN], top)
        if share is not None:
            targets.append(
                Target(
                    f"rerun of the finished {top.sender} send / the send [{scope}]",
                    f"{100 * share:.1f}%",
                    f"<= {100 * TARGET_RERUN_SHARE:.0f}%",
                    share <= TARGET_RERUN_SHARE,
                )
            )
    return targets


def _processes_in(rows: dict[str, Row]) -> list[int]:
    prefix = fastsend_label(0)[:-1]
    return [int(name[len(prefix) :]) for name in rows if name.startswith(prefix)]


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render(
    rows: dict[str, Row],
    data: GeneratedSet,
    cold: bool,
    runs: int,
    info: dict[str, Any],
    loads: tuple[tuple[float, ...], tuple[float, ...]],
    largest: int,
    targets: list[Target],
) -> str:
    files = data.shape.files
    lines = [
        f"### {files:,} files, {'cold cache' if cold else 'warm cache'}: median of {runs} run(s)",
        "",
        f"Machine: {describe_machine(info)}. Load average (1/5/15 min) at the start "
        f"{'/'.join(f'{x:.2f}' for x in loads[0])}, at the end "
        f"{'/'.join(f'{x:.2f}' for x in loads[1])}.",
        f"Data: {files:,} CT files of {data.file_bytes:,} bytes "
        f"({data.total_bytes / 1e9:.2f} GB), {data.shape.studies:,} studies of "
        f"{data.shape.files_per_study} in {data.shape.series_per_study} series; receiver "
        f"TCP_NODELAY=1 storescp --fork --ignore --max-pdu {MAX_PDU} on {LOOPBACK}.",
        "",
        "| sender | seconds | files/s | vs storescu | first stored (s) | peak RSS, MB: "
        "largest process (coordinator / worker) | CPU us/file (coordinator / workers) | "
        "failed runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    storescu_row = rows.get(STORESCU)
    for name, row in rows.items():
        seconds = row.median("seconds")
        versus = "1.00x" if name == STORESCU else "n/a"
        if storescu_row is not None and name not in (STORESCU, RERUN):
            ratio = per_round_ratio(storescu_row, row)
            versus = _fmt(ratio, ".2f") + "x" if ratio else "n/a"
        elif name == RERUN:
            versus = "-"
        cpu = _fmt(row.median("cpu_us_per_file"), ".0f")
        if name == STORESCU:
            memory = f"{row.peak() / MB:.0f}"
        else:
            cpu += (
                f" ({_fmt(row.cpu_us_per_file('coordinator', files), '.0f')} / "
                f"{_fmt(row.cpu_us_per_file('worker', files), '.0f')})"
            )
            memory = (
                f"{row.peak() / MB:.0f} ({row.peak('coordinator') / MB:.0f} / "
                f"{row.peak('worker') / MB:.0f})"
            )
        label = f"{name} (of the {fastsend_label(largest)} send)" if name == RERUN else name
        first = row.first_store_seconds
        lines.append(
            f"| {label} | {_fmt(seconds, '.2f')} | "
            f"{_fmt(files / seconds if seconds and name != RERUN else None, ',.0f')} | "
            f"{versus} | {_fmt(first, '.2f')} | {memory} | "
            f"{cpu} | {len(row.runs) - len(row.good)} |"
        )
    if storescu_row is not None:
        lines += [
            "",
            "storescu's first stored file is from a separate `storescu -v` run per "
            "round, stopped at its first store response (-v slows the whole run).",
        ]
    lines += ["", "| target | value | target | met |", "|---|---:|---:|---|"]
    for target in targets:
        met = "n/a" if target.met is None else ("met" if target.met else "NOT met")
        lines.append(f"| {target.name} | {target.value} | {target.target} | {met} |")
    problems = [
        f"- {run.sender} round {run.round}: {run.problem}"
        for row in rows.values()
        for run in row.runs
        if run.problem
    ]
    if problems:
        lines += ["", "Problems:", *problems]
    return "\n".join(lines)


def result_key(files: int, cold: bool) -> str:
    return f"{files}-{'cold' if cold else 'warm'}"


def load_results(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"results": {}}
    if not isinstance(document, dict) or not isinstance(document.get("results"), dict):
        return {"results": {}}
    return document


# ====================================================================== main


@dataclass(frozen=True, slots=True)
class Options:
    files: int
    runs: int
    cold: bool
    processes: list[int]
    data: Path
    out: Path
    files_per_study: int
    series_per_study: int
    storescu: bool
    rerun: bool
    keep: bool
    python: str
    timeout: float | None
    generate_processes: int | None


def benchmark(options: Options, say: Say = print) -> dict[str, Any]:
    """Generate (or reuse) the set, run every sender --runs times, return the result entry."""
    storescp_binary = find_dcmtk("storescp")
    storescu_binary = find_dcmtk("storescu") if options.storescu else None
    if storescp_binary is None or (options.storescu and storescu_binary is None):
        raise SystemExit(
            "bench/scale.py needs DCMTK's storescp and storescu (a storescp/storescu from "
            "pynetdicom does not count): apt-get install dcmtk"
        )
    if options.cold:
        problem = drop_caches()
        if problem:
            raise SystemExit(f"--cold: {problem}; the cold rows cannot be measured")

    shape = SetShape(options.files, options.files_per_study, options.series_per_study)
    say(f"data: {options.data}")
    data = generate(options.data, shape, options.generate_processes)
    if data.reused:
        say(f"  reusing {shape.files:,} files ({data.total_bytes / 1e9:.2f} GB)")
    else:
        say(
            f"  wrote {shape.files:,} files ({data.total_bytes / 1e9:.2f} GB) in "
            f"{data.seconds:.1f} s ({shape.files / data.seconds:,.0f} files/s)"
        )
    if not options.cold:
        say(f"  warm-up: read every file once in {warm_up(data.tree):.1f} s")

    info = machine()
    say(f"machine: {describe_machine(info)}")
    work = Path(tempfile.mkdtemp(prefix="fastsend-scale-"))
    largest = max(options.processes)
    rows: dict[str, Row] = {}
    if options.storescu:
        rows[STORESCU] = Row(STORESCU, [])
    for processes in options.processes:
        rows[fastsend_label(processes)] = Row(fastsend_label(processes), [])
    if options.rerun:
        rows[RERUN] = Row(RERUN, [])
    load_start = os.getloadavg()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def report(run: RunResult) -> None:
        first = _fmt(run.first_store_seconds, ".2f")
        say(
            f"  round {run.round}: {run.sender:<16} {run.seconds:8.2f} s "
            f"{run.files_per_second:9,.0f} files/s  first stored {first} s  "
            f"peak RSS {run.peak_rss_bytes / MB:5.0f} MB  CPU {run.cpu_us_per_file:5.0f} us/file"
            f"  load {run.load_average[0]:.2f}"
            + (f"  PROBLEM: {run.problem}" if run.problem else "")
        )

    try:
        with storescp(storescp_binary, work / "storescp") as port:
            bench = Bench(
                tree=data.tree,
                files=shape.files,
                port=port,
                work=work,
                storescu=storescu_binary,
                python=options.python,
                cold=options.cold,
                timeout=options.timeout,
            )
            for number in range(1, options.runs + 1):
                if options.storescu:
                    first = probe_storescu_first_store(bench)
                    rows[STORESCU].first_store_probe.append(first)
                    say(f"  round {number}: storescu -v probe: first stored {_fmt(first, '.2f')} s")
                    run = run_storescu(bench, number)
                    rows[STORESCU].runs.append(run)
                    report(run)
                for processes in options.processes:
                    log_dir = work / f"logs-P{processes}-{number}"
                    label = fastsend_label(processes)
                    run = run_fastsend(bench, number, processes, log_dir, label)
                    rows[label].runs.append(run)
                    report(run)
                if options.rerun:
                    log_dir = work / f"logs-P{largest}-{number}"
                    run = run_fastsend(bench, number, largest, log_dir, RERUN)
                    rows[RERUN].runs.append(run)
                    report(run)
    finally:
        if options.keep:
            say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()

    document = load_results(options.out)
    baseline_key = result_key(100_000, options.cold)
    baseline = document["results"].get(baseline_key) if options.files > 100_000 else None
    targets = check_targets(
        rows, shape.files, options.cold, largest, baseline, 100_000 if baseline else None
    )
    text = render(
        rows, data, options.cold, options.runs, info, (load_start, load_end), largest, targets
    )
    fastsend_peak = max((row.peak() for name, row in rows.items() if name != STORESCU), default=0)
    entry: dict[str, Any] = {
        "started_at": started,
        "machine": info,
        "files": shape.files,
        "shape": asdict(shape),
        "file_bytes": data.file_bytes,
        "data": str(options.data),
        "cold": options.cold,
        "runs": options.runs,
        "load_average": {"start": load_start, "end": load_end},
        "fastsend_peak_rss_bytes": fastsend_peak,
        "senders": {name: row.as_dict(shape.files) for name, row in rows.items()},
        "targets": [target.as_dict() for target in targets],
        "table": text,
    }
    document["results"][result_key(shape.files, options.cold)] = entry
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(document, indent=1) + "\n")
    return entry


def default_data(files: int, per_study: int, series: int) -> Path:
    suffix = "" if (per_study, series) == (100, 1) else f"-{per_study}x{series}"
    return Path.home() / ".cache" / "dicom-fastsend" / "scale" / f"{files}{suffix}"


def parse_processes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"process counts must be at least 1: {text!r}")
    return sorted(set(values))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--files", type=int, default=100_000, help="files in the set")
    parser.add_argument("--runs", type=int, default=3, help="rounds of every sender")
    parser.add_argument(
        "--cold", action="store_true", help="drop the page cache before every command (root)"
    )
    parser.add_argument(
        "--processes",
        type=parse_processes,
        default=[1, 2, 4],
        help="fastsend -P values, comma-separated",
    )
    parser.add_argument(
        "--data", type=Path, help="where the set is kept (default ~/.cache/dicom-fastsend/scale/N)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results_scale.json",
        help="results JSON, merged (one entry per file count and cache state)",
    )
    parser.add_argument("--files-per-study", type=int, default=100)
    parser.add_argument("--series-per-study", type=int, default=1)
    parser.add_argument(
        "--no-storescu", dest="storescu", action="store_false", help="fastsend only"
    )
    parser.add_argument(
        "--no-rerun", dest="rerun", action="store_false", help="no rerun of the finished send"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (fastsend logs, journals, outputs)",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="the Python that runs `-m dicom_fastsend`"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=7200.0,
        help="seconds before a command is killed (its run then counts as failed)",
    )
    parser.add_argument(
        "--generate-processes", type=int, help="processes writing the set (default: one per core)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        shape = SetShape(args.files, args.files_per_study, args.series_per_study)
    except ValueError as exc:
        parser.error(str(exc))
    options = Options(
        files=args.files,
        runs=args.runs,
        cold=args.cold,
        processes=args.processes,
        data=args.data or default_data(args.files, shape.files_per_study, shape.series_per_study),
        out=args.out,
        files_per_study=args.files_per_study,
        series_per_study=args.series_per_study,
        storescu=args.storescu,
        rerun=args.rerun,
        keep=args.keep,
        python=args.python,
        timeout=args.timeout or None,
        generate_processes=args.generate_processes,
    )
    entry = benchmark(options, lambda line: print(line, flush=True))
    print()
    print(entry["table"])
    print(f"\nresults: {options.out} [{result_key(options.files, options.cold)}]")
    failed = sum(sender["failed_runs"] for sender in entry["senders"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
