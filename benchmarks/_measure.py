"""Running a `mailops` command as its own process, with its wall time and peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_mb: float
    exit_code: int
    output: str


def run_mailops(*arguments: str, env: dict[str, str] | None = None) -> Run:
    """Run `python -m mailops ARGUMENTS`; output is read to the end before the process is reaped."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "mailops", *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = process.stdout.read()
    _pid, status, usage = os.wait4(process.pid, 0)
    return Run(
        seconds=time.perf_counter() - started,
        peak_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        exit_code=os.waitstatus_to_exitcode(status),
        output=output.decode(errors="replace"),
    )
