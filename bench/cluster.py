"""What --cluster costs: local `-P 2` against a 2-worker Dask LocalCluster, same files.

    python bench/cluster.py            # 2,000 CT files of 512x512x16 bit, 3 runs each
    python bench/cluster.py --quick    # 200 files

Both send to one DCMTK `storescp --ignore --fork` with TCP_NODELAY=1 on
127.0.0.1 (DCMTK at its best, so the receiver is not what is measured). The
cluster is a `distributed.LocalCluster` of 2 worker processes with 1 thread
each on loopback, started once before the runs: its start-up is not counted,
as a site's cluster is already running. Every figure is the median of --runs
whole `fastsend send` commands, alternating local and cluster runs so that
the host's drift hits both alike; the senders, the receiver and the data are
those of bench/run.py (bench/compare.py). The overhead ratio is
cluster files/s over local files/s. Results go to bench/results_cluster.json.
"""

from __future__ import annotations

import argparse
import compileall
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import compare
import dicom_fastsend

REPO = Path(__file__).resolve().parent.parent
LOCAL = "local -P 2"
CLUSTER = "--cluster (2 Dask workers)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 CT files instead of 2,000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=REPO / "bench" / ".data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results_cluster.json")
    args = parser.parse_args()
    try:
        dcmtk = compare.require_dcmtk()
        from distributed import LocalCluster
    except compare.ToolMissing as exc:
        sys.exit(str(exc))
    except ImportError:
        sys.exit("Dask's distributed is needed: pip install 'dicom-fastsend[cluster]'")

    count = 200 if args.quick else 2000
    data = args.data / f"ct{count}"
    files = compare._archive(data, count, "CT", 512, print)
    size = sum(p.stat().st_size for p in files)
    compileall.compile_dir(Path(dicom_fastsend.__file__).parent, quiet=1)  # as run_compare does
    print(f"machine: {compare.machine()}")

    seconds: dict[str, list[float]] = {LOCAL: [], CLUSTER: []}
    with (
        tempfile.TemporaryDirectory(prefix="fastsend-bench-cluster-") as temporary,
        compare._running(
            compare.storescp_receiver(dcmtk["storescp"], Path(temporary), tcp_nodelay=True)
        ) as receiver,
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
        ) as cluster,
    ):  # fmt: skip
        logs = Path(temporary) / "logs"
        variants = {
            LOCAL: compare.fastsend(receiver.port, receiver.aet, data, 2, logs),
            CLUSTER: compare.fastsend(
                receiver.port, receiver.aet, data, 2, logs, "--cluster", cluster.scheduler_address
            ),
        }
        # One unmeasured run each: page cache and the workers' imports warm.
        for run in variants.values():
            run()
        for number in range(args.runs):
            for label, run in variants.items():
                elapsed = run().seconds
                seconds[label].append(elapsed)
                print(f"  run {number + 1}: {label:<28} {len(files) / elapsed:8.1f} files/s",
                      flush=True)  # fmt: skip

    medians = {label: statistics.median(values) for label, values in seconds.items()}
    rows = {
        label: {
            "seconds": seconds[label],
            "files_per_second": len(files) / median,
            "megabytes_per_second": size / 1e6 / median,
        }
        for label, median in medians.items()
    }
    ratio = medians[LOCAL] / medians[CLUSTER]  # files/s of the cluster over local
    result = {
        "machine": compare.machine(),
        "files": len(files),
        "bytes": size,
        "runs": args.runs,
        "rows": rows,
        "ratio": ratio,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{len(files)} files, {size / 1e6:.0f} MB, median of {args.runs} runs")
    print("| sender | files/s | MB/s |\n|---|---:|---:|")
    for label, row in rows.items():
        print(f"| {label} | {row['files_per_second']:.0f} | {row['megabytes_per_second']:.0f} |")
    print(f"\n--cluster / local: {ratio:.2f}x (overhead {100 * (1 - ratio):.0f}%)")


if __name__ == "__main__":
    main()
