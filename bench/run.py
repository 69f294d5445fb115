"""Benchmark fastsend against DCMTK storescu, pynetdicom and a raw TCP pump, in one run.

    python bench/run.py                  # the full set (20-30 minutes on 2 cores, 3.7 GB of data)
    python bench/run.py --scale-files 0  # without the 100,000 small files (10-20 minutes)
    python bench/run.py --quick          # a smaller set to try the harness
    python bench/run.py --readme         # also rewrite the table in README.md

The work is in bench/compare.py; `fastsend bench` is the installed
package's quick self-check (the sink only, no other tools).
Every figure is the median of --runs runs (3 by default) of a whole command,
start-up and indexing included, on the same files, against receivers started
on 127.0.0.1: DCMTK `storescp --ignore --fork` at its best (TCP_NODELAY=1 and
--max-pdu 131072, as storescu sends: the headline), with TCP_NODELAY=1 and its
default 16 KB PDUs, and with DCMTK's defaults (Nagle on, as most PACS run,
DCMTK FAQ #48), a stock Orthanc, `fastsend sink`, and the sink behind a 20 ms
RTT proxy. Senders: DCMTK `storescu --max-pdu 131072 +sd +r`, pynetdicom's
storescu, fastsend with 1, 2, 4 and 8 processes, and a raw pump (sendfile of
the same files to a reader that discards them: the ceiling). Beside files/s,
each sender's CPU per file: user and system time of its whole process tree
(wait4 of the command, forked workers included). Data sets: 2,000 CT of
512x512, 5,000 MR of 256x256 (also indexed by fastsend's header scan and by
pydicom), one multi-frame file of about 500 MB, and 100,000 CT of 64x64 (9.2
KB each, bench/scale_data.py's set; --scale-files). Results go to
bench/results.json (--quick: bench/.data/results-quick.json, so the full
figures are not overwritten); a Markdown table naming the machine goes to
stdout (and into README.md with --readme).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from compare import CompareOptions, CompareSizes, ToolMissing, run_compare, update_readme

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data sets (a few minutes)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=REPO / "bench" / ".data")
    parser.add_argument("--out", type=Path, help="results JSON (default: see above)")
    parser.add_argument("--mr", type=int, help="MR files (default 5000, --quick 500)")
    parser.add_argument(
        "--multiframe-mb", type=int, help="size of the multi-frame file (default 500, --quick 50)"
    )
    parser.add_argument(
        "--orthanc-files", type=int, help="CT files sent to Orthanc (default 2000, --quick 30)"
    )
    parser.add_argument(
        "--scale-files",
        type=int,
        help="small files (64x64) sent to storescp at its best (default 100000, --quick 5000; "
        "0 leaves them out)",
    )
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    if args.readme and args.quick:
        parser.error("--readme takes the figures of a full run, not of --quick")

    sizes = CompareSizes.quick() if args.quick else CompareSizes()
    overrides = {
        name: value
        for name, value in (
            ("mr", args.mr),
            ("multiframe_mb", args.multiframe_mb),
            ("orthanc", args.orthanc_files),
            ("scale", args.scale_files),
        )
        if value is not None
    }
    sizes = dataclasses.replace(sizes, **overrides)
    out = args.out or (
        args.data / "results-quick.json" if args.quick else REPO / "bench" / "results.json"
    )
    try:
        result = run_compare(
            CompareOptions(data=args.data, out=out, sizes=sizes, runs=args.runs),
            lambda line: print(line, flush=True),
        )
    except ToolMissing as exc:
        sys.exit(f"bench/run.py: {exc} (or run bash tests/run.sh once)")
    print()
    print(result.text)
    print(f"\nresults: {out}")
    if args.readme:
        update_readme(REPO / "README.md", result.text)


if __name__ == "__main__":
    main()
