"""Run the real `fastsend` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Both hot paths: the compiled one and its pure-Python twin.
IMPLEMENTATIONS = ("cython", "python")


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def fastsend(
    *args: str,
    implementation: str = "cython",
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> Run:
    if args and args[0] == "send" and "--log-dir" not in args:
        # Each run gets its own log dir, so no journal carries over between tests.
        args = (*args, "--log-dir", tempfile.mkdtemp(prefix="fastsend-logs-"))
    environment = dict(os.environ, **(env or {}))
    environment.pop("FASTSEND_PURE_PYTHON", None)
    if implementation == "python":
        environment["FASTSEND_PURE_PYTHON"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "dicom_fastsend", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def send_args(host: str, port: int, ae_title: str, *inputs: str) -> list[str]:
    args = ["send", "-a", ae_title, "-H", host, "-p", str(port), "-r"]
    for path in inputs:
        args += ["-i", path]
    return args
