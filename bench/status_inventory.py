"""How long `fastsend status` takes on a large inventory: python bench/status_inventory.py.

Writes an inventory of --rows files (default 1,000,000) the way a migration
leaves it: the schema made by fastsend's own Inventory, then rows inserted
directly (50 files a study in one directory each; 70 % stored, 1 % failed
with a few reasons and some per-file ones, 0.5 % skipped, the rest pending
or in flight; two sessions, the latest not finished). Then times the whole
`fastsend status` command, text and --json, --runs times each.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from dicom_fastsend.engine.inventory import Inventory

FILES_PER_STUDY = 50
REASONS = (
    "0xA700 Refused: Out of Resources",
    "0xC000 Error: Cannot understand",
    "no acceptable presentation context for CT Image Storage",
)


def rows(count: int, started: float) -> Iterator[tuple[object, ...]]:
    rng = random.Random(1)
    for index in range(count):
        study = index // FILES_PER_STUDY
        draw = rng.random()
        state = (
            "stored"
            if draw < 0.70
            else "failed"
            if draw < 0.71
            else "skipped"
            if draw < 0.715
            else "in_flight"
            if draw < 0.716
            else "pending"
        )
        read = state != "pending"
        earlier = draw < 0.3  # stored by the first session
        size = 500_000 + rng.randrange(1000)
        last_at = started - 3600 * rng.random() if earlier else started + 2990 * rng.random()
        reason = status = None
        if state == "failed":
            reason = rng.choice(REASONS)
            if rng.random() < 0.3:
                reason = f"damaged or truncated data set at offset {rng.randrange(99999)}"
            status = 0xA700 if reason.startswith("0xA7") else None
        held = state == "stored"
        yield (
            f"/archive/p{study // 10:05d}/study{study:06d}/series1",
            f"{index:08d}.dcm",
            size,
            1.5e9,
            "1.2.840.10008.5.1.4.1.1.2" if read else "",
            f"1.2.826.0.1.3680043.10.1447.{index}" if read else "",
            f"1.2.826.0.1.3680043.10.1447.9.{study:040d}" if read else "",
            "1.2.826.0.1.3680043.10.1447.8.1" if read else "",
            "1.2.840.10008.1.2.1" if read else "",
            132 if read else 0,
            state,
            1 if read else 0,
            status,
            reason or "",
            started - 7200,
            last_at,
            "first" if earlier else "latest",
            size if held else None,
            1.5e9 if held else None,
            "stored" if held else None,
        )


def write(path: Path, count: int) -> None:
    Inventory(path, "NEWPACS@pacs:104", "latest").close()  # the schema, as fastsend makes it
    started = time.time() - 3000
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executemany(
        "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
        [
            ("first", started - 7200, started - 3600, 1, "elsewhere", 130),
            ("latest", started, None, 1, "elsewhere", None),
        ],
    )
    db.execute("BEGIN")
    db.executemany(f"INSERT INTO files VALUES ({', '.join('?' * 20)})", rows(count, started))
    db.execute("COMMIT")
    db.close()  # the last connection: checkpoints and removes the -wal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the inventory here and keep it")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fastsend-status-") as scratch:
        path = options.keep or Path(scratch) / "inventory.sqlite"
        path.unlink(missing_ok=True)
        begun = time.perf_counter()
        write(path, options.rows)
        print(
            f"{options.rows:,} rows written in {time.perf_counter() - begun:.1f} s:"
            f" {path.stat().st_size / 1e6:,.0f} MB"
        )
        command = [sys.executable, "-m", "dicom_fastsend", "status", "--journal", str(path)]
        for extra in ([], ["--json"]):
            times = []
            for _ in range(options.runs):
                begun = time.perf_counter()
                subprocess.run([*command, *extra], check=True, stdout=subprocess.DEVNULL)
                times.append(time.perf_counter() - begun)
            shown = ", ".join(f"{t:.2f}" for t in times)
            median = sorted(times)[len(times) // 2]
            print(f"fastsend status {' '.join(extra)}: {shown} s (median {median:.2f})")


if __name__ == "__main__":
    main()
