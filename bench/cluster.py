"""What --cluster costs: local `-P 2` against a 2-worker Dask LocalCluster, same files.

    python bench/cluster.py            # 2,000 CT files of 512x512x16 bit, 3 runs each
    python bench/cluster.py --quick    # 200 files

Both send to one DCMTK `storescp --ignore --fork` with TCP_NODELAY=1 on
127.0.0.1 (DCMTK at its best, so the receiver is not what is measured). The
cluster is a `distributed.LocalCluster` of 2 worker processes with 1 thread
each on loopback, started once before the runs: its start-up is not counted,
as a site's cluster is already running. Every figure is the median of --runs
whole `fastsend send` commands, alternating local and cluster runs so that
the host's drift hits both alike. The overhead ratio is cluster files/s over
local files/s. Results go to bench/results_cluster.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # reuse the tests' peer launchers

from dicom_fastsend.synth import write_archive  # noqa: E402
from peers import find_dcmtk, start_storescp  # noqa: E402


def timed_send(port: int, aet: str, data: Path, logs: Path, *options: str) -> float:
    """Seconds for one whole `fastsend send`; raises unless every file was stored."""
    command = [
        sys.executable, "-m", "dicom_fastsend", "send", "-i", str(data), "-r",
        "-a", aet, "-H", "127.0.0.1", "-p", str(port), "--log-dir", str(logs),
        "--no-resume", "--no-progress", *options,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"fastsend {' '.join(options)} exited {result.returncode}: "
                           f"{result.stderr[-2000:]}")  # fmt: skip
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 CT files instead of 2,000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=REPO / "bench" / ".data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results_cluster.json")
    args = parser.parse_args()
    if find_dcmtk("storescp") is None:
        sys.exit("DCMTK is needed: apt-get install dcmtk (or run bash tests/run.sh once)")
    try:
        from distributed import LocalCluster
    except ImportError:
        sys.exit("Dask's distributed is needed: pip install 'dicom-fastsend[cluster]'")

    count = 200 if args.quick else 2000
    data = args.data / f"ct{count}"
    if not data.exists():
        print(f"generating {count} CT files of 512x512x16 bit in {data} ...", flush=True)
        write_archive(data, studies=count // 100, instances_per_study=100, rows=512, columns=512)
    files = sorted(data.rglob("*.dcm"))
    size = sum(p.stat().st_size for p in files)

    seconds: dict[str, list[float]] = {"local -P 2": [], "--cluster (2 Dask workers)": []}
    with tempfile.TemporaryDirectory(prefix="fastsend-bench-cluster-") as temporary:
        work = Path(temporary)
        receiver = start_storescp(
            work / "storescp", aet="STORESCP", fork=True, ignore=True, tcp_nodelay=True
        )
        try:
            with LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
            ) as cluster:  # fmt: skip
                variants = {
                    "local -P 2": ("-P", "2"),
                    "--cluster (2 Dask workers)": ("--cluster", cluster.scheduler_address),
                }
                # One unmeasured run each: page cache and the workers' imports warm.
                for options in variants.values():
                    timed_send(receiver.port, receiver.aet, data, work / "logs", *options)
                for run in range(args.runs):
                    for label, options in variants.items():
                        elapsed = timed_send(
                            receiver.port, receiver.aet, data, work / "logs", *options
                        )
                        seconds[label].append(elapsed)
                        print(f"  run {run + 1}: {label:<28} {len(files) / elapsed:8.1f} files/s",
                              flush=True)  # fmt: skip
        finally:
            receiver.stop()

    rows = {}
    for label, values in seconds.items():
        median = statistics.median(values)
        rows[label] = {
            "seconds": values,
            "files_per_second": len(files) / median,
            "megabytes_per_second": size / 1e6 / median,
        }
    local, remote = rows["local -P 2"], rows["--cluster (2 Dask workers)"]
    ratio = remote["files_per_second"] / local["files_per_second"]
    result = {"files": len(files), "bytes": size, "runs": args.runs, "rows": rows, "ratio": ratio}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{len(files)} files, {size / 1e6:.0f} MB, median of {args.runs} runs")
    print("| sender | files/s | MB/s |\n|---|---:|---:|")
    for label, row in rows.items():
        print(f"| {label} | {row['files_per_second']:.0f} | {row['megabytes_per_second']:.0f} |")
    print(f"\n--cluster / local: {ratio:.2f}x (overhead {100 * (1 - ratio):.0f}%)")


if __name__ == "__main__":
    main()
