"""Apply verifying 200 manual accounts, one after another vs. concurrently, as whole processes.

Real Dovecot (IMAPS) and aiosmtpd (STARTTLS) on 127.0.0.1, reached through a local TCP
proxy that adds 100 ms of round-trip latency to every connection, as a distant provider
would. Each account: IMAP login, SMTP login and a test mail. Every run is the real command
`python -m mailops apply --auto-approve` as its own process, on a fresh state, with
MAILOPS_CONCURRENCY set; wall time and peak memory are measured as in benchmarks/_measure.py.

One after another takes over a second per account, so 200 of them are not measured:
the run is measured at two sizes (10 and 30 accounts by default), and the fixed cost of
the process (start-up, imports, state) is kept apart from the per-account cost, as
intercept + 200 * slope of the line through the two points.

Targets: concurrent apply of 200 accounts at least 20x faster than one after another
(extrapolated); and memory flat: the concurrent run's peak memory at 200 accounts within
15 % of its peak at 100 accounts (both sizes keep all 100 slots of the default concurrency
busy, so what is compared is the number of accounts, not the number in flight).
Run (needs Dovecot, which `make bench` installs; takes a few minutes):
    .venv/bin/python benchmarks/apply_concurrency.py [--accounts N] [--concurrency N]
        [--sequential-sizes A B] [--memory-baseline N]
Exit code 0 when both targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import shutil
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._measure import measured_by, run_mailops  # noqa: E402
from tests.servers import HOST, Dovecot, MailUsers, Smtp, free_port, write_certificate  # noqa: E402

TARGET_SPEEDUP = 20
FLAT_WITHIN = 0.15  # peak memory growth still called flat
ROUND_TRIP_SECONDS = 0.1


class DelayingProxy:
    """Forwards 127.0.0.1:port -> 127.0.0.1:upstream with ``rtt`` of added round-trip latency.

    Every chunk in either direction is delivered ``rtt / 2`` after it was read, in order,
    as on a long line; the connection itself is also held back by one round trip.
    """

    def __init__(self, upstreams: list[int], rtt: float):
        self.one_way = rtt / 2
        self.ports = {upstream: free_port() for upstream in upstreams}
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        for upstream, port in self.ports.items():
            self.loop.run_until_complete(asyncio.start_server(self._handler(upstream), HOST, port, backlog=1024))
        self.ready.set()
        self.loop.run_forever()

    def _handler(self, upstream: int):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(2 * self.one_way)  # SYN / SYN-ACK over the long line
            up_reader, up_writer = await asyncio.open_connection(HOST, upstream)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

        return handle

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                writer.write(data)
                await writer.drain()
            writer.close()

        delivery = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((self.loop.time() + self.one_way, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait(None)
        try:
            await delivery
        except (ConnectionError, OSError):
            pass

    def start(self) -> DelayingProxy:
        self.thread.start()
        self.ready.wait(10)
        return self


def write_spec(config: Path, addresses: list[str], imap_port: int, smtp_port: int) -> None:
    config.mkdir(parents=True, exist_ok=True)
    lines = ["accounts:"]
    for address in addresses:
        lines += [
            f"  - address: {address}",
            "    provider: manual",
            f"    display_name: {address.split('@')[0]}",
            f"    username: {address}",
            "    password: {file: passwords/" + address + "}",
            f"    imap: {{host: {HOST}, port: {imap_port}, encryption: ssl}}",
            f"    smtp: {{host: {HOST}, port: {smtp_port}, encryption: starttls}}",
        ]
    (config / "accounts.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (config / "defaults.yaml").write_text(
        f"defaults: {{email: {addresses[0]}, sender_name: Bench}}\n", encoding="utf-8"
    )


class Bench:
    """The servers and the proxy; each run gets its own accounts, spec and state."""

    def __init__(self, root: Path, users: MailUsers, ca: Path, imap_port: int, smtp_port: int):
        self.root, self.users, self.ca = root, users, ca
        self.imap_port, self.smtp_port = imap_port, smtp_port

    def apply(self, concurrency: int, count: int) -> tuple[float, float]:
        """Wall seconds and peak MiB of `mailops apply` creating COUNT new accounts."""
        tag = f"c{concurrency}-n{count}"
        work = self.root / tag
        addresses = [f"bench{n}-{tag}@example.com" for n in range(count)]
        (work / "config" / "passwords").mkdir(parents=True)
        for address in addresses:
            password = secrets.token_hex(8)
            self.users.add(address, password)
            (work / "config" / "passwords" / address).write_text(password)
        write_spec(work / "config", addresses, self.imap_port, self.smtp_port)
        env = {
            **os.environ,
            "MAILOPS_CONFIG_DIR": str(work / "config"),
            "MAILOPS_STATE_URL": f"sqlite:///{work / 'state.db'}",
            "MAILOPS_CA_FILE": str(self.ca),
            "MAILOPS_CONCURRENCY": str(concurrency),
        }
        before = resource.getrusage(resource.RUSAGE_SELF)
        run = run_mailops("apply", "--auto-approve", env=env)
        after = resource.getrusage(resource.RUSAGE_SELF)
        if run.exit_code != 0:
            sys.exit(f"apply of {count} accounts failed (exit code {run.exit_code}):\n{run.output[-3000:]}")
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        label = "one after another" if concurrency == 1 else "concurrent"
        print(
            f"{label:>17}, {count:>3} accounts: {run.seconds:7.2f} s measured, peak {run.peak_mib:5.1f} MiB "
            f"(this process's CPU for aiosmtpd and the proxy: {cpu:.2f} s)",
            flush=True,
        )
        return run.seconds, run.peak_mib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--sequential-sizes", type=int, nargs=2, default=(10, 30), metavar=("A", "B"))
    parser.add_argument("--memory-baseline", type=int, default=100, help="smaller size of the memory check")
    args = parser.parse_args()
    small, large = sorted(args.sequential_sizes)
    if small == large:
        parser.error("--sequential-sizes needs two different sizes")
    root = Path(tempfile.mkdtemp(prefix="mailops-bench-"))
    root.chmod(0o755)
    cert, key = write_certificate(root)
    users = MailUsers(root)
    dovecot, smtp = Dovecot(root, users, cert, key), Smtp(users, cert, key)
    dovecot.start()
    smtp.start()
    print(f"peak memory measured by {measured_by()}", flush=True)
    try:
        proxy = DelayingProxy([dovecot.tls_port, smtp.starttls_port], ROUND_TRIP_SECONDS).start()
        bench = Bench(root, users, cert, proxy.ports[dovecot.tls_port], proxy.ports[smtp.starttls_port])
        (t_small, _), (t_large, _) = bench.apply(1, small), bench.apply(1, large)
        _, baseline_peak = bench.apply(args.concurrency, args.memory_baseline)
        concurrent, peak = bench.apply(args.concurrency, args.accounts)
    finally:
        smtp.stop()
        dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)
    slope = (t_large - t_small) / (large - small)
    intercept = t_small - small * slope
    sequential = intercept + args.accounts * slope
    print(
        f"one after another, {args.accounts} accounts: {sequential:7.2f} s extrapolated "
        f"= {intercept:.2f} s fixed + {args.accounts} x {slope:.3f} s per account"
    )
    speedup = sequential / concurrent
    fast = speedup >= TARGET_SPEEDUP
    print(
        f"speed-up {speedup:.1f}x with concurrency {args.concurrency} "
        f"({sequential:.2f} s / {concurrent:.2f} s; target >= {TARGET_SPEEDUP}x): {'meets' if fast else 'MISSES'}"
    )
    growth = peak / baseline_peak - 1
    flat = growth <= FLAT_WITHIN
    print(
        f"peak memory of the concurrent apply: {baseline_peak:.1f} MiB at {args.memory_baseline} accounts, "
        f"{peak:.1f} MiB at {args.accounts} ({growth:+.0%}): "
        f"{'flat' if flat else 'grows with the number of accounts'} "
        f"(target: within {FLAT_WITHIN:.0%}): {'meets' if flat else 'MISSES'}"
    )
    return 0 if fast and flat else 1


if __name__ == "__main__":
    sys.exit(main())
