"""Wall time and peak memory of the whole `mailops plan` command, at 1,000 and 10,000 accounts.

The fixture is a spec of N manual accounts and a SQLite state that holds them: the last
10 % of the accounts are new and every 20th recorded one has drifted. The real command
`python -m mailops plan --detailed-exitcode` (exit code 2: changes) runs as its own
process, with MAILOPS_CONFIG_DIR and MAILOPS_STATE_URL set, after one untimed warm-up
run; its wall time includes interpreter start-up and imports, and its peak memory is
measured as in benchmarks/_measure.py.

Targets, for the whole process: 1,000 accounts in under 0.5 s (median); 10,000 accounts
in under 3 s (median) and under 200 MiB peak memory. Printed beside them, for information:
what start-up alone costs, the interpreter with the imports of a plan (the command line, the
spec models, the state snapshot and the plan), measured the same way and alternating with the
plan runs, so that the rest is what planning that many accounts takes.
Run: .venv/bin/python benchmarks/plan.py [--sizes 1000 10000] [--runs N]
Exit code 0 when every size meets its targets, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._measure import measure, measured_by, run_mailops, spread  # noqa: E402

# What `mailops plan` imports before it reads a file: the start-up a plan cannot avoid.
_IMPORTS = "import mailops.cli, mailops.engine.plan, mailops.state.snapshot, mailops.views.plan"

# accounts -> (median wall seconds, peak MiB or None)
TARGETS: dict[int, tuple[float, float | None]] = {1000: (0.5, None), 10000: (3.0, 200)}


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
    try:
        for index, account in enumerate(spec.accounts[: count - count // 10]):  # the last 10 % are new
            settings = account.model_dump(mode="json")
            if index % 20 == 0:  # every 20th has drifted
                settings["archive"]["retention_days"] += 1
            store.record_account(account.address, account.provider, settings, "connected")
    finally:
        store.close()


def build_fixture(root: Path, count: int) -> dict[str, str]:
    """Write the spec and state for COUNT accounts under ROOT; return the command's environment."""
    config, url = root / "config", f"sqlite:///{root}/state.db"
    write_spec(config, count)
    fill_state(config, url, count)
    return {
        **os.environ,
        "MAILOPS_CONFIG_DIR": str(config),
        "MAILOPS_STATE_URL": url,
        "BENCH_PASSWORD": "not-a-secret",
    }


def bench(count: int, runs: int) -> bool:
    target_seconds, target_mib = TARGETS[count]
    with tempfile.TemporaryDirectory(prefix="mailops-bench-plan-") as tmp:
        env = build_fixture(Path(tmp), count)
        timings, peaks, start_ups = [], [], []
        for attempt in range(runs + 1):  # the first run only warms the caches
            start_up = measure([sys.executable, "-c", _IMPORTS], env=env)
            run = run_mailops("plan", "--detailed-exitcode", env=env)
            if run.exit_code != 2:
                print(
                    f"mailops plan, {count} accounts: exit code {run.exit_code}, expected 2:\n{run.output[-3000:]}",
                    file=sys.stderr,
                )
                return False
            if attempt:
                timings.append(run.seconds)
                peaks.append(run.peak_mib)
                start_ups.append(start_up.seconds)
    median, low, high = spread(timings)
    peak = max(peaks)
    ok = median < target_seconds and (target_mib is None or peak < target_mib)
    targets = f"median < {target_seconds:g} s" + (f", peak < {target_mib:g} MiB" if target_mib else "")
    print(
        f"mailops plan, {count:>5} accounts: median {median:.2f} s, min {low:.2f} s, max {high:.2f} s "
        f"wall over {runs} runs; peak {peak:.0f} MiB; target {targets}: {'meets' if ok else 'MISSES'}",
        flush=True,
    )
    print(f"    of which start-up (the interpreter and the imports of a plan): median {spread(start_ups)[0]:.2f} s")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"peak memory measured by {measured_by()}", flush=True)
    results = [bench(count, args.runs) for count in args.sizes]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
