"""Median wall time of `mailops --help` (target: under 0.3 s; heavy imports are lazy).

Run: .venv/bin/python benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

TARGET_SECONDS = 0.3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    script = os.path.join(os.path.dirname(sys.executable), "mailops")
    subprocess.run([script, "--help"], capture_output=True, check=True)  # warm the file cache
    timings = []
    for _ in range(args.runs):
        started = time.perf_counter()
        subprocess.run([script, "--help"], capture_output=True, check=True)
        timings.append(time.perf_counter() - started)
    median = statistics.median(timings)
    verdict = "meets" if median < TARGET_SECONDS else "MISSES"
    print(
        f"mailops --help: median {median * 1000:.0f} ms over {args.runs} runs "
        f"(min {min(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms); "
        f"target < {TARGET_SECONDS * 1000:.0f} ms: {verdict}"
    )
    return 0 if median < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
