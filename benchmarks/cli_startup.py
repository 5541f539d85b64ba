"""Median wall time of the whole `mailops --help` command (target: under 0.3 s; heavy imports are lazy).

Runs the installed `mailops` script as its own process, measured as in benchmarks/_measure.py,
after one untimed run that warms the file cache.
Run: .venv/bin/python benchmarks/cli_startup.py [--runs N]
Exit code 0 when the median meets the target, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._measure import measure, spread  # noqa: E402

TARGET_SECONDS = 0.3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    command = [os.path.join(os.path.dirname(sys.executable), "mailops"), "--help"]
    timings = []
    for attempt in range(args.runs + 1):  # the first run only warms the file cache
        run = measure(command)
        if run.exit_code != 0:
            print(f"mailops --help: exit code {run.exit_code}:\n{run.output[-3000:]}", file=sys.stderr)
            return 1
        if attempt:
            timings.append(run.seconds)
    median, low, high = spread(timings)
    verdict = "meets" if median < TARGET_SECONDS else "MISSES"
    print(
        f"mailops --help: median {median * 1000:.0f} ms over {args.runs} runs "
        f"(min {low * 1000:.0f} ms, max {high * 1000:.0f} ms); "
        f"target < {TARGET_SECONDS * 1000:.0f} ms: {verdict}"
    )
    return 0 if median < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
