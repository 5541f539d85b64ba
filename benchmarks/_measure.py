"""Running a command as its own process, with its wall time and peak memory.

Every benchmark measures the same way. The peak memory is taken by a small intermediate
process that starts the command and reads the resource usage of its own children only,
so neither the benchmark's own memory nor that of its test servers can leak into it:
GNU time (`/usr/bin/time -f %M`, KiB) when it is installed, otherwise a tiny
`python -c` wrapper that runs the command with subprocess and reports
`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` (KiB on Linux). Figures are in MiB.

The wall time covers the whole command, interpreter start-up included. Under GNU time it
is taken around the wrapper (which adds about a millisecond); under the Python wrapper,
whose own start-up would add tens of milliseconds, the wrapper times the command itself.
Linux carries a child's peak across exec, so the Python wrapper's own size (about 10 MiB)
is a floor to its figure; GNU time's floor is under 2 MiB.

The command runs with Python's bytecode cache on, as an installed command does (pip compiles
at install; Python caches what it compiles on first import): a shell that sets
PYTHONDONTWRITEBYTECODE would otherwise make every timed run recompile mailops's sources.
The benchmarks' untimed warm-up run fills the cache.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GNU_TIME = "/usr/bin/time"
KIB_PER_MIB = 1024  # ru_maxrss and %M are KiB; figures are MiB (1024 * 1024 bytes)

# argv: report file, command... Writes "<peak KiB> <wall seconds>" and exits as the command did.
_WRAPPER = """\
import resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as report:
    report.write(f"{peak} {seconds!r}\\n")
sys.exit(128 - code if code < 0 else code)
"""


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_mib: float
    exit_code: int
    output: str


@functools.cache
def gnu_time() -> bool:
    """Whether /usr/bin/time is GNU time (it understands -f %M and -o)."""
    if not os.access(GNU_TIME, os.X_OK):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        probe = subprocess.run([GNU_TIME, "-o", str(report), "-f", "%M", "true"], capture_output=True)
        return probe.returncode == 0 and report.exists() and report.read_text().strip().isdigit()


def measured_by() -> str:
    return f"{GNU_TIME} -f %M" if gnu_time() else "a python -c wrapper (RUSAGE_CHILDREN)"


def measure(command: Sequence[str], env: dict[str, str] | None = None) -> Run:
    """Run COMMAND under the intermediate process; its output is kept (stderr merged into stdout)."""
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        if gnu_time():
            wrapped = [GNU_TIME, "-o", str(report), "-f", "%M", *command]
        else:
            wrapped = [sys.executable, "-c", _WRAPPER, str(report), *command]
        started = time.perf_counter()
        process = subprocess.run(wrapped, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
        lines = report.read_text().strip().splitlines() if report.exists() else []
        if not lines:
            raise RuntimeError(f"no measurement of {' '.join(command)}:\n{process.stdout.decode(errors='replace')}")
        # GNU time may put "Command exited with non-zero status N" before the figure.
        fields = lines[-1].split()
    if not gnu_time():
        seconds = float(fields[1])
    return Run(
        seconds=seconds,
        peak_mib=int(fields[0]) / KIB_PER_MIB,
        exit_code=process.returncode,
        output=process.stdout.decode(errors="replace"),
    )


def run_mailops(*arguments: str, env: dict[str, str] | None = None) -> Run:
    """Run `python -m mailops ARGUMENTS` with this interpreter (the virtualenv's)."""
    return measure([sys.executable, "-m", "mailops", *arguments], env=env)


def spread(seconds: Sequence[float]) -> tuple[float, float, float]:
    """Median, min and max of some wall times."""
    return statistics.median(seconds), min(seconds), max(seconds)
