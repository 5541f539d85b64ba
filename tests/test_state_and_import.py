"""The state store's schema, crash safety of apply, `mailops import`, and the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from mailops.cli import app
from mailops.spec import load_spec
from mailops.state import StateStore
from mailops.state.schema import KNOWN_REVISIONS, SCHEMA_REVISION
from tests.conftest import spec_files

runner = CliRunner()
MAILOPS = [sys.executable, "-m", "mailops"]


def test_state_schema_is_created_by_migrations_and_reopening_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'state.db'}"
    store = StateStore.open(url)
    store.record_account(
        "A@Example.com", "manual", {"password": {"env": "X", "file": None}}, "connected", verified=True
    )
    store.close()
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("select version_num from alembic_version")).scalar() == SCHEMA_REVISION
    assert {"accounts", "apply_lock", "alembic_version"} <= set(inspect(engine).get_table_names())
    reopened = StateStore.open(url)
    assert [a.address for a in reopened.accounts()] == ["a@example.com"]


# Each process imports first and then waits for the others, so that all of them open the store at once.
_OPEN_STORE = """
import sys, time
from pathlib import Path
from mailops.state import StateStore
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.002)
StateStore.open(url, create=True).close()
"""


def _open_at_once(url: str, meeting: Path, processes: int = 6) -> list[subprocess.CompletedProcess[str]]:
    meeting.mkdir()
    go = meeting / "go"
    started = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_STORE, url, str(meeting / f"ready-{n}"), str(go)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    deadline = time.monotonic() + 60
    while len(list(meeting.glob("ready-*"))) < processes and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), "", p.stderr.read()) for p in started]


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("select version_num from alembic_version")).scalar()
    finally:
        engine.dispose()


def test_processes_that_create_the_same_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """`mailops run` in several terminals, or CI jobs, on a store that does not exist yet."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    outcomes = _open_at_once(url, tmp_path / "meeting")
    assert [o.stderr.strip().splitlines()[-1:] for o in outcomes if o.returncode] == []
    assert _revision(url) == SCHEMA_REVISION


def test_processes_that_create_the_same_new_postgresql_store_at_once_all_succeed(
    postgres_url: str, tmp_path: Path
) -> None:
    server = postgres_url.rsplit("/", 1)[0]
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE DATABASE created_at_once"))
    admin.dispose()
    url = f"{server}/created_at_once"
    outcomes = _open_at_once(url, tmp_path / "meeting")
    assert [o.stderr.strip().splitlines()[-1:] for o in outcomes if o.returncode] == []
    assert _revision(url) == SCHEMA_REVISION


_KILLED_IN_MIGRATION = """
import os, sys
from alembic.operations import Operations
from mailops.state import StateStore
create_table, made = Operations.create_table, []
def create_then_die(self, *args, **kwargs):
    if len(made) == 2:
        os._exit(9)  # as a kill would: no rollback, no cleanup
    made.append(create_table(self, *args, **kwargs))
Operations.create_table = create_then_die
StateStore.open(sys.argv[1], create=True)
"""


def test_a_kill_in_the_middle_of_creating_the_store_leaves_no_half_made_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    killed = subprocess.run([sys.executable, "-c", _KILLED_IN_MIGRATION, url], capture_output=True, timeout=120)
    assert killed.returncode == 9, killed.stderr
    assert set(inspect(create_engine(url)).get_table_names()) == set()  # the tables made before the kill are gone
    store = StateStore.open(url)  # and the next start makes the store, rather than refusing a stranger's
    store.close()
    assert _revision(url) == SCHEMA_REVISION


def test_kill_during_apply_then_apply_again_converges(engine_env, mail_servers, new_account) -> None:
    slow = [new_account("slow") for _ in range(3)]  # the test SMTP server takes 1.5 s for their DATA
    spec_files(engine_env, "".join(a.yaml(mail_servers) for a in slow))
    env = {**os.environ, "MAILOPS_CONCURRENCY": "1"}
    process = subprocess.Popen(
        [*MAILOPS, "apply", "--auto-approve"],
        env=env,
        cwd=engine_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    deadline = time.monotonic() + 20
    while not store.accounts() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = store.accounts()
    assert 1 <= len(done) < 3, "the kill should land between two accounts"
    assert all(a.status == "connected" for a in done)
    assert store.current_lock() is not None  # left behind by the killed apply

    again = subprocess.run(
        [*MAILOPS, "apply", "--auto-approve"], env=env, cwd=engine_env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"Apply complete: {3 - len(done)} account(s) done." in again.stdout
    final = subprocess.run([*MAILOPS, "plan", "--detailed-exitcode"], cwd=engine_env, capture_output=True, text=True)
    assert final.returncode == 0
    assert "No changes." in final.stdout


def test_import_round_trip_keeps_comments_and_adds_drift(example_config, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MAILOPS_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    spec = load_spec(example_config).spec
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    for account in spec.accounts:
        store.record_account(account.address, account.provider, account.model_dump(mode="json"), "connected")
    # Someone changed the live state by hand: a new retention, and an account the spec does not know.
    support = spec.account("support@example.com").model_dump(mode="json")
    support["archive"]["retention_days"] = 90
    store.record_account("support@example.com", "microsoft", support, "connected")
    drift = spec.account("shop@example.net").model_copy(
        update={"address": "drift@posteo.de", "imap": None, "smtp": None}
    )
    drift_settings = drift.model_dump(mode="json")
    drift_settings.update(
        imap={"host": "posteo.de", "port": 993, "encryption": "ssl"},
        smtp={"host": "posteo.de", "port": 587, "encryption": "starttls"},
    )
    store.record_account("drift@posteo.de", "manual", drift_settings, "connected")

    before = (example_config / "accounts.yaml").read_text()
    result = runner.invoke(app, ["import", "-c", str(example_config)])
    assert result.exit_code == 0, result.output
    assert "~ support@example.com: archive.retention_days" in result.stdout
    assert "+ drift@posteo.de (only in the live state)" in result.stdout
    after = (example_config / "accounts.yaml").read_text()

    # Every comment line of the original is still there, and in the same order.
    comments = [line.strip() for line in before.splitlines() if line.strip().startswith("#")]
    assert [line.strip() for line in after.splitlines() if line.strip().startswith("#")][: len(comments)] == comments
    assert "      retention_days: 90             # 0 keeps archived mail forever" in after
    # The drift account is written without what the posteo.de preset fills in.
    drift_block = after.split("- address: drift@posteo.de", 1)[1]
    assert "imap" not in drift_block.split("projects:")[0]

    reloaded = load_spec(example_config).spec
    assert reloaded.account("support@example.com").archive.retention_days == 90
    assert reloaded.account("drift@posteo.de").model_dump(mode="json") == drift_settings
    # Importing again finds nothing to write.
    second = runner.invoke(app, ["import", "-c", str(example_config)])
    assert "already matches the live state" in second.stdout


def test_demo_runs_end_to_end_on_the_embedded_server(tmp_path) -> None:
    repo_config = Path(__file__).resolve().parent.parent / "config"
    result = subprocess.run(
        [*MAILOPS, "demo", "-c", str(repo_config)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Apply complete: 5 account(s) done." in result.stdout
    assert "and arrived in the inbox" in result.stdout
    # The OAuth account consents by device code and then logs in with XOAUTH2.
    assert "support@example.com is connected: IMAP and SMTP log in with XOAUTH2" in result.stdout
    assert "5 of 5 account(s) connected." in result.stdout
    assert result.stdout.rstrip().endswith("the final plan has no changes.")
    assert "No changes. The live state matches the spec." in result.stdout


def test_known_revisions_are_the_migrations_in_order() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from mailops.state.schema import KNOWN_REVISIONS, SCHEMA_REVISION

    config = Config()
    config.set_main_option("script_location", "mailops.state:migrations")
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_current_head() == SCHEMA_REVISION
    oldest_first = [script.revision for script in reversed(list(scripts.walk_revisions()))]
    assert tuple(oldest_first) == KNOWN_REVISIONS


@pytest.mark.parametrize("revision", KNOWN_REVISIONS[:-1])
def test_a_store_of_each_older_mailops_is_upgraded_keeping_its_accounts(tmp_path: Path, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", "mailops.state:migrations")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO accounts (address, provider, settings, status, created_at, updated_at) VALUES "
                "('a@example.com', 'manual', '{}', 'connected', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    engine.dispose()
    store = StateStore.open(url)
    assert [account.address for account in store.accounts()] == ["a@example.com"]
    store.close()
    assert _revision(url) == SCHEMA_REVISION


def test_postgresql_state_store_works_like_sqlite(postgres_url, engine_env, mail_servers, new_account, monkeypatch):
    monkeypatch.setenv("MAILOPS_STATE_URL", postgres_url)
    first, second = new_account(), new_account()
    spec_files(engine_env, first.yaml(mail_servers) + second.yaml(mail_servers))
    applied = runner.invoke(app, ["apply", "--auto-approve"])
    assert applied.exit_code == 0, applied.output
    assert runner.invoke(app, ["plan", "--detailed-exitcode"]).exit_code == 0
    store = StateStore.open(postgres_url)
    states = {s.address: s for s in store.accounts()}
    assert {states[a.address].status for a in (first, second)} == {"connected"}
    assert states[first.address].last_test_mail_at.tzinfo is not None
    lock = store.acquire_lock(wait=0)
    assert store.current_lock().lock_id == lock.lock_id
    assert store.release_lock(lock.lock_id)


def test_a_field_added_by_a_newer_mailops_is_no_change_to_stored_accounts(engine_env, mail_servers, new_account):
    account = new_account()
    spec_files(engine_env, account.yaml(mail_servers))
    assert runner.invoke(app, ["apply", "--auto-approve"]).exit_code == 0
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    older = {key: value for key, value in store.account(account.address).settings.items() if key != "aliases"}
    store.record_account(account.address, "manual", older, "connected")  # as a mailops without `aliases` stored it
    planned = runner.invoke(app, ["plan", "--detailed-exitcode"])
    assert planned.exit_code == 0, planned.stdout
    # Setting the new field is a change like any other.
    spec_files(engine_env, account.yaml(mail_servers, signature='"Regards"'))
    assert "~ signature" in runner.invoke(app, ["plan"]).stdout
