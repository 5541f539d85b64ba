"""Several `mailops run` processes on one state store, and what a worker logs.

PostgreSQL: workers share the accounts through leases, each its fair share; a worker killed with
SIGKILL in the middle of an import, or stalled with SIGSTOP, loses its accounts to the others once
its leases expire, and nothing is lost or imported twice. SQLite: one worker, and a second one is
refused with the name of the first. The logs: one JSON object per line with --log-format json,
colour on a terminal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.test_worker import MAILOPS, Mailbox, mail, run, ticket

LEASE_SECONDS = "4"  # short, so that a killed worker's accounts are taken over soon
JSON_KEYS = {"time", "level", "event", "account", "counts", "error_class", "message", "host", "pid"}


def write_spec(directory: Path, mail_servers, accounts: list, *, tickets: bool = True) -> None:
    """Every account imports into tickets; apply sends no test mails (the mailboxes stay empty)."""
    config = directory / "config"
    config.mkdir(exist_ok=True)
    settings = ticket() if tickets else "{enabled: false}"
    entries = "".join(account.yaml(mail_servers, ticket=settings) for account in accounts)
    (config / "accounts.yaml").write_text(
        f"accounts:\n{entries}projects:\n  SHOP: {{email: {accounts[0].address}}}\n", encoding="utf-8"
    )
    (config / "defaults.yaml").write_text(
        f"defaults:\n  email: {accounts[0].address}\n  sender_name: Example GmbH\n"
        "queues: [support]\npolicies: {test_mail: {on_apply: false}}\n",
        encoding="utf-8",
    )


def applied(directory: Path, mail_servers, accounts: list) -> None:
    write_spec(directory, mail_servers, accounts)
    result = run("apply", "--auto-approve")
    assert result.exit_code == 0, result.output


def fresh_database(postgres_url: str) -> str:
    """A new, empty database on the session's PostgreSQL server; its URL."""
    server = postgres_url.rsplit("/", 1)[0]
    database = f"scale_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {database}"))
    admin.dispose()
    return f"{server}/{database}"


def json_lines(output: str) -> list[dict]:
    """Every line of a worker's output, each a JSON object with the keys every line has."""
    events = [json.loads(line) for line in output.splitlines()]
    for event in events:
        assert JSON_KEYS <= set(event), event
        assert event["level"] in ("info", "warning", "error")
        assert event["time"].endswith("Z") and dt.datetime.fromisoformat(event["time"]).tzinfo is not None
    return events


def until(condition, what: str, timeout: float = 180) -> None:
    """Wait for ``condition()`` (polling); fail after ``timeout`` seconds, which only a broken worker needs."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.2)


class Workers:
    """`mailops run` processes started by a test, each with its output in a file; all ended at teardown."""

    def __init__(self, directory: Path):
        self.directory, self.processes = directory, []

    def start(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        with open(self.directory / f"{name}.log", "w", encoding="utf-8") as output:
            process = subprocess.Popen(
                [*MAILOPS, "run", *args],
                cwd=self.directory,
                env=os.environ | (env or {}),
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.processes.append(process)
        return process

    def output(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(encoding="utf-8")

    def end(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


# -- PostgreSQL: three workers, thirty accounts ------------------------------------------------------


def test_three_workers_share_thirty_accounts_and_take_over_from_one_killed_mid_import(
    postgres_url, engine_env, mail_servers, new_account, monkeypatch
) -> None:
    url = fresh_database(postgres_url)
    monkeypatch.setenv("MAILOPS_STATE_URL", url)
    monkeypatch.setenv("MAILOPS_MESSAGE_DIR", str(engine_env / "messages"))
    monkeypatch.setenv("MAILOPS_WORKER_LEASE", LEASE_SECONDS)
    accounts = [new_account() for _ in range(30)]
    applied(engine_env, mail_servers, accounts)
    database = create_engine(url)

    def owners() -> dict[str, int]:
        """account -> pid of the worker holding its lease (expired ones included)."""
        with database.connect() as connection:
            held = connection.execute(text("SELECT resource, owner_pid FROM leases WHERE owner_token IS NOT NULL"))
            return dict(held.all())

    workers = Workers(engine_env)
    try:
        first = workers.start("w1", "--interval", "1", "--log-format", "json")
        until(lambda: list(Counter(owners().values()).values()) == [30], "the only worker holds every account")
        second = workers.start("w2", "--interval", "1", "--log-format", "json")
        # The third kills itself (SIGKILL) right after its 4th commit: in the middle of importing its share.
        doomed = workers.start(
            "w3", "--interval", "1", "--log-format", "json", env={"MAILOPS_TEST_CRASH_AT": "after-commit:4"}
        )
        # The first frees what is beyond its fair share once the others count, and they take it.
        until(lambda: sorted(Counter(owners().values()).values()) == [10, 10, 10], "a share of 10 each")
        shares = owners()
        assert set(shares.values()) == {first.pid, second.pid, doomed.pid}
        doomed_accounts = {address for address, pid in shares.items() if pid == doomed.pid}

        sent = {}
        for account in accounts:
            raws = [mail(f"Mail {n}", f"<{n}.{account.address}>") for n in range(3)]
            Mailbox(mail_servers, account).append(*raws)
            sent |= {f"<{n}.{account.address}>": (account.address, raw) for n, raw in enumerate(raws)}

        assert doomed.wait(timeout=180) == -signal.SIGKILL
        until(lambda: messages(database) == len(sent), "every message imported")
        until(lambda: set(owners().values()) == {first.pid, second.pid}, "the killed worker's accounts taken over")
        # Two live workers now: a fair share is 15 each.
        assert sorted(Counter(owners().values()).values()) == [15, 15]

        # A worker that stalls (SIGSTOP: a frozen VM, say) past its leases loses its accounts the same way;
        # when it wakes up it notices, and gets its share back from the other one.
        stalled_accounts = {address for address, pid in owners().items() if pid == second.pid}
        second.send_signal(signal.SIGSTOP)
        until(lambda: set(owners().values()) == {first.pid}, "the stalled worker's accounts taken over")
        for account in accounts:
            if account.address in stalled_accounts:
                raw = mail("Late", f"<late.{account.address}>")
                Mailbox(mail_servers, account).append(raw)
                sent[f"<late.{account.address}>"] = (account.address, raw)
        until(lambda: messages(database) == len(sent), "the mail of the stalled worker's accounts imported")
        second.send_signal(signal.SIGCONT)
        until(lambda: sorted(Counter(owners().values()).values()) == [15, 15], "a share of 15 each again")
        until(lambda: lost(workers.output("w2")) == stalled_accounts, "the woken worker noticed its losses")
        for process in (first, second):
            process.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0
    finally:
        workers.end()

    # Nothing lost, nothing doubled: one index row, one ticket and the raw file of each message.
    with database.connect() as connection:
        rows = connection.execute(text("SELECT account, message_id, raw_sha256, ticket_id FROM messages")).all()
        tickets = connection.execute(text("SELECT count(*) FROM tickets")).scalar()
        leases = connection.execute(text("SELECT count(*), count(owner_token) FROM leases")).one()
        live_workers = connection.execute(text("SELECT count(*) FROM workers")).scalar()
    database.dispose()
    assert sorted(row.message_id for row in rows) == sorted(sent)
    assert tickets == len(sent) and len({row.ticket_id for row in rows}) == len(sent)
    for row in rows:
        address, raw = sent[row.message_id]
        assert row.account == address
        stored = (engine_env / "messages" / row.raw_sha256[:2] / f"{row.raw_sha256}.eml").read_bytes()
        assert stored == raw and hashlib.sha256(stored).hexdigest() == row.raw_sha256
    assert tuple(leases) == (30, 0) and live_workers == 0  # a clean stop frees every lease

    # The logs: every line is JSON (the killed worker's, up to its last whole line).
    logs = {name: json_lines(workers.output(name)) for name in ("w1", "w2")}
    killed_output = workers.output("w3")
    json_lines(killed_output[: killed_output.rfind("\n") + 1])
    passwords = [account.password for account in accounts]
    for output in [workers.output(name) for name in ("w1", "w2", "w3")]:
        assert not any(password in output for password in passwords)
    survivors = logs["w1"] + logs["w2"]
    taken_over = [event for event in survivors if event["event"] == "lease_taken_over"]
    from_whom = {(event["account"], event["previous_owner"]["pid"]) for event in taken_over}
    assert from_whom == {(address, doomed.pid) for address in doomed_accounts} | {
        (address, second.pid) for address in stalled_accounts
    }
    for event in taken_over:
        assert event["previous_owner"]["host"] == socket.gethostname()
        # Taken over only once the lease had expired.
        assert dt.datetime.fromisoformat(event["time"]) >= dt.datetime.fromisoformat(event["expired_at"])
    shares_seen = {(e["counts"]["workers"], e["counts"]["share"]) for e in survivors if e["event"] == "pass_started"}
    assert {(3, 10), (2, 15)} <= shares_seen
    imported = Counter()
    for event in survivors:
        if event["event"] == "account_done":
            imported[event["account"]] += event["counts"]["imported"]
    # The survivors imported their own accounts' mail, and of the killed worker's what it had not committed.
    sent_to = Counter(address for address, _raw in sent.values())
    for account in accounts:
        if account.address not in doomed_accounts:
            assert imported[account.address] == sent_to[account.address]
    assert sum(imported[address] for address in doomed_accounts) <= sum(sent_to[a] for a in doomed_accounts) - 4
    freed = [e for e in logs["w1"] if e["event"] == "lease_released" and "fair share" in e["message"]]
    assert len(freed) >= 20  # the first worker gave up what the newcomers were entitled to
    assert [e["event"] for e in logs["w1"]][-1] == "worker_stopped"


def lost(output: str) -> set[str]:
    """The accounts whose leases a worker's JSON log says it lost."""
    return {json.loads(line)["account"] for line in output.splitlines() if '"lease_lost"' in line}


def messages(database) -> int:
    with database.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM messages")).scalar()


def test_a_worker_cut_off_from_the_database_gives_its_accounts_up_after_one_lease(postgres_url: str) -> None:
    """Renewals that fail within the lease keep the accounts (one notice); once no renewal has worked for a whole
    lease, each account's work is told to stop, and another worker takes them over when the database is back."""
    import threading

    from mailops.runtime.leases import LeaseKeeper
    from mailops.state import StateStore
    from mailops.state.leases import LeaseOwner, Leases

    url, seconds, accounts = fresh_database(postgres_url), 2.0, ["a@example.com", "b@example.com"]
    name = url.rsplit("/", 1)[1]
    admin = create_engine(f"{url.rsplit('/', 1)[0]}/postgres", isolation_level="AUTOCOMMIT")
    store, other_store = StateStore.open(url, create=True), StateStore.open(url, create=False)
    owner, other = LeaseOwner.this_process(), LeaseOwner.this_process()
    leases = Leases(store)
    held = leases.claim(owner, accounts, seconds).held
    failures: list[str] = []
    lost: list[tuple[str, str]] = []
    keeper = LeaseKeeper(
        leases,
        owner,
        seconds,
        stop=threading.Event(),
        on_lost=lambda resource, why: lost.append((resource, why)),
        on_renewal_failed=failures.append,
    )
    with keeper.lock:
        keeper.hold(held, time.monotonic())
    try:
        keeper.renew()
        assert held == tuple(accounts) and (failures, lost) == ([], [])
        with admin.connect() as connection:  # the database goes away: no new session, and this worker's ended
            connection.execute(text(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"))
            connection.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        keeper.renew()
        keeper.renew()
        assert len(failures) == 1 and lost == []  # told once; the accounts are still certainly this worker's
        stops = [keeper.stop_of(account) for account in accounts]  # what each account's import watches
        assert not any(stop.is_set() for stop in stops)
        time.sleep(seconds)  # a whole lease without a renewal
        keeper.renew()
        assert sorted(lost) == [(account, "no renewal succeeded for a whole lease duration") for account in accounts]
        assert all(stop.is_set() for stop in stops) and keeper.held == []
        with admin.connect() as connection:
            connection.execute(text(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"))
        taken = Leases(other_store).claim(other, accounts, seconds)
        assert taken.held == tuple(accounts) and [lease.owner for lease in taken.taken_over] == [owner, owner]
        keeper.renew()  # the database answers again: the first worker holds nothing, and hears nothing more
        assert len(failures) == 1 and len(lost) == 2
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"))
        admin.dispose()
        store.close()
        other_store.close()


# -- SQLite: one worker -----------------------------------------------------------------------------


def test_sqlite_refuses_a_second_worker_and_names_the_first(engine_env, mail_servers, new_account) -> None:
    support = new_account()
    applied(engine_env, mail_servers, [support])
    Mailbox(mail_servers, support).append(mail("Hello", "<hello@example.org>"))

    def holder_and_imported() -> tuple[int | None, int]:
        with sqlite3.connect(engine_env / "state.db") as connection:
            row = connection.execute("SELECT owner_pid FROM leases WHERE resource = '*'").fetchone()
            imported = connection.execute("SELECT count(*) FROM messages").fetchone()[0]
        return (row[0] if row else None), imported

    workers = Workers(engine_env)
    try:
        running = workers.start("first", "--interval", "1")
        until(lambda: holder_and_imported() == (running.pid, 1), "the first worker holds the store and imported")

        refused = run("run", "--once")
        assert refused.exit_code == 1 and refused.stdout == ""
        assert refused.stderr.startswith(
            "Error: SQLite runs one worker, and another `mailops run` is working on this state store "
            f"(host {socket.gethostname()}, pid {running.pid}, since "
        )
        assert refused.stderr.endswith(
            "Stop that one first, or keep the state in PostgreSQL (MAILOPS_STATE_URL) to run several workers.\n"
        )
        [line] = json_lines(run("run", "--once", "--log-format", "json").stdout)
        assert (line["event"], line["level"]) == ("worker_refused", "error")
        assert line["held_by"] == {"host": socket.gethostname(), "pid": running.pid}

        # Killed, the first worker is no longer in the way (its process is gone from this machine).
        running.kill()
        running.wait()
        again = run("run", "--once")
        assert again.exit_code == 0, again.output
        assert again.stdout == f"{support.address}: imported 0, skipped 0\n"  # the first one imported it
    finally:
        workers.end()
    with sqlite3.connect(engine_env / "state.db") as connection:
        assert connection.execute("SELECT owner_token FROM leases").fetchall() == [(None,)]  # freed on exit


# -- what the worker logs ------------------------------------------------------------------------------


def test_json_log_has_one_object_per_line_and_no_secrets(engine_env, mail_servers, new_account, monkeypatch) -> None:
    good, locked_out = new_account(), new_account()
    applied(engine_env, mail_servers, [good, locked_out])
    Mailbox(mail_servers, good).append(mail("One", "<one@example.org>"), mail("Two", "<two@example.org>"))
    monkeypatch.setenv(locked_out.env_name, "a wrong password")

    result = run("run", "--once", "--log-format", "json")
    assert result.exit_code == 1 and result.stderr == ""
    events = json_lines(result.stdout)
    assert [event["event"] for event in events[:2]] == ["worker_started", "pass_started"]
    assert events[-1]["event"] == "pass_done" and events[-1]["level"] == "error"
    assert events[-1]["counts"] == {"accounts": 2, "failed": 1, "imported": 2, "held": 2, "declared": 2}
    by_account = {event["account"]: event for event in events[2:-1]}
    done, failed = by_account[good.address], by_account[locked_out.address]
    assert (done["event"], done["level"], done["error_class"]) == ("account_done", "info", None)
    assert done["counts"]["imported"] == 2 and done["counts"]["already_stored"] == 0
    assert done["message"] == f"{good.address}: imported 2, skipped 0"
    assert (failed["event"], failed["level"], failed["error_class"]) == ("account_failed", "error", "auth")
    assert "AUTHENTICATIONFAILED" in failed["message"] and failed["remedy"]
    assert "a wrong password" not in result.stdout and good.password not in result.stdout

    # Plain text stays as it was: one line per account.
    plain = run("run", "--once", "--account", good.address)
    assert plain.exit_code == 0 and plain.stdout == f"{good.address}: imported 0, skipped 0\n"


def test_on_a_terminal_the_worker_shows_its_lines_in_colour(engine_env, mail_servers, new_account) -> None:
    support = new_account()
    applied(engine_env, mail_servers, [support])
    Mailbox(mail_servers, support).append(mail("Hello", "<hello@example.org>"))
    controller, terminal = os.openpty()
    process = subprocess.Popen(
        [*MAILOPS, "run", "--once"],
        cwd=engine_env,
        env=os.environ | {"TERM": "xterm-256color", "COLUMNS": "160"},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal is closed once the worker has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert process.wait(timeout=60) == 0
    shown = b"".join(chunks).decode("utf-8", errors="replace")
    assert f"{support.address}: imported 1, skipped 0" in shown
    assert "\x1b[" in shown  # rich's colours and progress display, not plain lines
