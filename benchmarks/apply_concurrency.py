"""Apply verifying 200 manual accounts, one after another vs. concurrently.

Real Dovecot (IMAPS) and aiosmtpd (STARTTLS) on 127.0.0.1, reached through a local TCP
proxy that adds 100 ms of round-trip latency to every connection, as a distant provider
would. Each account: IMAP login, SMTP login and a test mail.

One after another is linear in the number of accounts, so by default it is measured on
a sample (--sequential-sample) and scaled; pass --sequential-sample 200 to measure it all.

Target: concurrent apply at least 20x faster than one-after-the-other; memory flat.
Run (needs Dovecot, which `make test` installs): .venv/bin/python benchmarks/apply_concurrency.py
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

from benchmarks._measure import run_mailops  # noqa: E402
from tests.servers import HOST, Dovecot, MailUsers, Smtp, free_port, write_certificate  # noqa: E402

TARGET_SPEEDUP = 20
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


def timed_apply(config: Path, state: Path, ca: Path, concurrency: int) -> tuple[float, float]:
    env = {
        **os.environ,
        "MAILOPS_CONFIG_DIR": str(config),
        "MAILOPS_STATE_URL": f"sqlite:///{state}",
        "MAILOPS_CA_FILE": str(ca),
        "MAILOPS_CONCURRENCY": str(concurrency),
    }
    run = run_mailops("apply", "--auto-approve", env=env)
    if run.exit_code != 0:
        sys.exit(f"apply failed:\n{run.output[-3000:]}")
    return run.seconds, run.peak_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--sequential-sample", type=int, default=25)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mailops-bench-"))
    root.chmod(0o755)
    cert, key = write_certificate(root)
    users = MailUsers(root)
    dovecot, smtp = Dovecot(root, users, cert, key), Smtp(users, cert, key)
    dovecot.start()
    smtp.start()
    try:
        proxy = DelayingProxy([dovecot.tls_port, smtp.starttls_port], ROUND_TRIP_SECONDS).start()
        results = {}
        runs = (
            ("one after another", 1, min(args.sequential_sample, args.accounts)),
            ("concurrent", args.concurrency, args.accounts),
        )
        for label, concurrency, count in runs:
            work = root / label.replace(" ", "-")
            addresses = [f"bench{n}-{label[0]}@example.com" for n in range(count)]
            (work / "config" / "passwords").mkdir(parents=True)
            for address in addresses:
                password = secrets.token_hex(8)
                users.add(address, password)
                (work / "config" / "passwords" / address).write_text(password)
            write_spec(work / "config", addresses, proxy.ports[dovecot.tls_port], proxy.ports[smtp.starttls_port])
            before = resource.getrusage(resource.RUSAGE_SELF)
            elapsed, peak = timed_apply(work / "config", work / "state.db", cert, concurrency)
            after = resource.getrusage(resource.RUSAGE_SELF)
            scaled = elapsed * args.accounts / count
            results[label] = (scaled, peak)
            note = f" (measured {elapsed:.2f} s for {count}, scaled)" if count != args.accounts else ""
            print(
                f"{label:>17}: {args.accounts} accounts in {scaled:6.2f} s{note}, peak RSS {peak:.0f} MB; "
                f"test servers' CPU {after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime:.2f} s",
                flush=True,
            )
    finally:
        smtp.stop()
        dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)
    speedup = results["one after another"][0] / results["concurrent"][0]
    verdict = "meets" if speedup >= TARGET_SPEEDUP else "MISSES"
    print(
        f"speed-up {speedup:.1f}x with concurrency {args.concurrency} (target >= {TARGET_SPEEDUP}x): {verdict}; "
        f"memory {results['one after another'][1]:.0f} MB -> {results['concurrent'][1]:.0f} MB"
    )
    return 0 if speedup >= TARGET_SPEEDUP else 1


if __name__ == "__main__":
    sys.exit(main())
