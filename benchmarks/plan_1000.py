"""Planning 1,000 accounts against a state that holds them (some changed, some new).

Targets: the plan (load and check the spec, read the state, diff) under 1 s, and the
whole `mailops plan` command under 200 MB peak memory. The command's wall time, which
adds interpreter start-up and imports, is printed beside it.
Run: .venv/bin/python benchmarks/plan_1000.py [--accounts N] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._measure import run_mailops  # noqa: E402

TARGET_SECONDS = 1.0
TARGET_MB = 200


def write_spec(config: Path, count: int) -> None:
    config.mkdir(parents=True)
    lines = ["accounts:"]
    for n in range(count):
        lines += [
            f"  - address: user{n}@example.com",
            "    provider: manual",
            f"    display_name: User {n}",
            f"    username: user{n}",
            "    password: {env: BENCH_PASSWORD}",
            f"    imap: {{host: imap{n % 7}.example.com, port: 993, encryption: ssl}}",
            f"    smtp: {{host: smtp{n % 7}.example.com, port: 587, encryption: starttls}}",
            "    ticket: {enabled: true, default_queue: support, import_since: 2026-01-01}",
            f"    archive: {{enabled: true, retention_days: {n % 400}}}",
        ]
    (config / "accounts.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (config / "defaults.yaml").write_text(
        "defaults: {email: user0@example.com, sender_name: Bench}\nqueues: [support]\n", encoding="utf-8"
    )


def fill_state(config: Path, url: str, count: int) -> None:
    from mailops.spec import load_spec
    from mailops.state import StateStore

    spec = load_spec(config).spec
    store = StateStore.open(url)
    for index, account in enumerate(spec.accounts[: count - count // 10]):  # the last 10 % are new
        settings = account.model_dump(mode="json")
        if index % 20 == 0:  # every 20th has drifted
            settings["archive"]["retention_days"] += 1
        store.record_account(account.address, account.provider, settings, "connected")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config, url = Path(tmp) / "config", f"sqlite:///{tmp}/state.db"
        write_spec(config, args.accounts)
        fill_state(config, url, args.accounts)
        env = {**os.environ, "MAILOPS_STATE_URL": url, "MAILOPS_CONFIG_DIR": str(config)}
        in_process = []
        for _ in range(args.runs):
            in_process.append(_plan_in_process(config, url))
        timings, peaks = [], []
        for _ in range(args.runs):
            run = run_mailops("plan", "--detailed-exitcode", env=env)
            if run.exit_code != 2:
                print(run.output, file=sys.stderr)
                return 1
            timings.append(run.seconds)
            peaks.append(run.peak_mb)
    plan_median, median, peak = statistics.median(in_process), statistics.median(timings), max(peaks)
    ok = plan_median < TARGET_SECONDS and peak < TARGET_MB
    print(
        f"plan of {args.accounts} accounts: median {plan_median:.2f} s over {args.runs} runs "
        f"(target < {TARGET_SECONDS:.0f} s); `mailops plan` command: median {median:.2f} s wall, "
        f"peak RSS {peak:.0f} MB (target < {TARGET_MB} MB): {'meets' if ok else 'MISSES'} the targets"
    )
    return 0 if ok else 1


def _plan_in_process(config: Path, url: str) -> float:
    from mailops.engine.plan import plan_for
    from mailops.spec import load_spec
    from mailops.state import StateStore

    started = time.perf_counter()
    plan = plan_for(load_spec(config), StateStore.open(url))
    elapsed = time.perf_counter() - started
    assert plan.has_changes
    return elapsed


if __name__ == "__main__":
    sys.exit(main())
