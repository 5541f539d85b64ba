"""Hostile and careless input to the commands: one clear line, exit 1, and nothing changed or lost."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy
from typer.testing import CliRunner

from mailops.cli import app
from mailops.state import StateStore
from mailops.state.schema import SCHEMA_REVISION
from tests.conftest import spec_files

runner = CliRunner()
MAILOPS = [sys.executable, "-m", "mailops"]


def run(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 4. one clear line instead of a traceback -------------------------------------------


def test_a_state_store_from_a_newer_mailops_is_refused_unchanged(write_config, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    StateStore.open(url).close()
    with sqlite3.connect(tmp_path / "state.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0042'")
    before = digest(tmp_path / "state.db")
    config = str(write_config())
    for command in (["plan", "-c", config], ["apply", "-c", config, "--auto-approve"], ["accounts", "-c", config]):
        result = run("--state", url, *command)
        assert result.exit_code == 1, command
        assert result.stderr.count("\n") == 1, result.stderr
        assert "has schema revision '0042', which this mailops does not know" in result.stderr
        assert "written by a newer mailops" in result.stderr
    assert digest(tmp_path / "state.db") == before


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ops:hunter2-pw@db.example:notaport/mailops",
        "host=db.example password=hunter2-pw dbname=mailops",
        "postgresql+psycopg://ops@127.0.0.1:1/mailops?password=hunter2-pw",
        "postgresql+psycopg://ops@127.0.0.1:1/mailops?sslmode=disable&password=hunter2,pw;x",
        "ops:hunter2-pw@127.0.0.1",
    ],
)
def test_a_broken_state_url_is_one_line_without_its_password(write_config, url: str) -> None:
    result = run("--state", url, "apply", "-c", str(write_config()), "--auto-approve")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot open the state store ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "hunter2" not in result.output and "pw@" not in result.output


@pytest.mark.parametrize(
    "content, got", [("[]", "a list"), ('"x"', "a string"), ("42", "a number"), ("null", "null"), ("[" * 100_000, None)]
)
def test_a_plan_file_that_is_not_a_plan_is_refused(write_config, tmp_path: Path, content: str, got) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(content, encoding="utf-8")
    state = tmp_path / "state.db"
    result = run("--state", f"sqlite:///{state}", "apply", "-c", str(write_config()), str(plan_file))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: plan file {plan_file} is not a saved plan: ")
    if got:
        assert result.stderr == f"Error: plan file {plan_file} is not a saved plan: expected a JSON object, got {got}\n"
    assert not state.exists()


def test_a_plan_file_that_is_a_device_is_refused(write_config, tmp_path: Path) -> None:
    result = run("--state", f"sqlite:///{tmp_path / 's.db'}", "apply", "-c", str(write_config()), "/dev/zero")
    assert result.exit_code == 1
    assert result.stderr == "Error: plan file /dev/zero is a character device, not a regular file\n"


def test_a_ca_file_that_is_missing_or_not_a_certificate_is_named(write_config, tmp_path: Path) -> None:
    config = str(write_config())
    missing = run("validate", "-c", config, env={"MAILOPS_CA_FILE": str(tmp_path / "nope.pem")})
    assert missing.exit_code == 1
    assert missing.stderr == f"Error: setting MAILOPS_CA_FILE: {tmp_path / 'nope.pem'} not found\n"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    result = run("validate", "-c", config, env={"MAILOPS_CA_FILE": str(junk)})
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"Error: setting MAILOPS_CA_FILE: cannot use {junk} as CA bundle: it holds no PEM certificate\n"
    )


def test_a_dotenv_that_is_not_utf8_is_one_line(write_config, tmp_path: Path) -> None:
    config = str(write_config())
    (tmp_path / ".env").write_bytes(b"MAILOPS_USER=J\xf6rg\n")
    result = run("validate", "-c", config)
    assert result.exit_code == 1
    assert result.stderr == "Error: .env:1:15: settings file is not valid UTF-8 (byte 0xf6); save the file as UTF-8\n"


@pytest.mark.parametrize(
    "content, message",
    [
        ('MAILOPS_STATE_URL="sqlite:///st.db\n', "Error: .env:1: cannot read this line; write it as NAME=value"),
        ("MAILOPS_STATE_URL=sqlite:///st\x00.db\n", "Error: setting MAILOPS_STATE_URL: holds a control character"),
        (None, "Error: settings file .env is a named pipe (FIFO), not a regular file"),
    ],
)
def test_a_broken_dotenv_stops_before_anything_runs(write_config, tmp_path: Path, content, message: str) -> None:
    config = str(write_config())
    if content is None:
        os.mkfifo(tmp_path / ".env")  # reading it would wait forever
    else:
        (tmp_path / ".env").write_text(content)
    result = run("plan", "-c", config)
    assert result.exit_code == 1
    assert result.stderr.startswith(message), result.stderr
    assert not (tmp_path / ".mailops").exists()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("MAILOPS_CONNECT_TIMEOUT", "inf", "Input should be a finite number"),
        ("MAILOPS_LOCK_WAIT", "1e309", "Input should be a finite number"),
        ("MAILOPS_WORKER_LEASE", "nan", "Input should be a finite number"),
        ("MAILOPS_COMMAND_TIMEOUT", "3601", "Input should be less than or equal to 3600"),
    ],
)
def test_waits_are_bounded(write_config, name: str, value: str, message: str) -> None:
    result = run("validate", "-c", str(write_config()), env={name: value})
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: setting {name}: {message}")


@pytest.mark.parametrize(
    "value, message",
    [
        ("nan", "nan is not a number"),  # every range check lets NaN through
        ("inf", "inf is not in the range 0.1<=x<=604800.0"),
        ("1e308", "1e+308 is not in the range 0.1<=x<=604800.0"),  # would overflow the wait after the first pass
        ("0", "0.0 is not in the range 0.1<=x<=604800.0"),
    ],
)
def test_the_worker_interval_is_a_bounded_number_of_seconds(write_config, tmp_path: Path, value: str, message: str):
    result = run("run", "--interval", value, "-c", str(write_config()))
    assert result.exit_code == 2  # a usage error, before the spec or the store is read
    assert f"Invalid value for '--interval': {message}" in result.stderr
    assert not (tmp_path / ".mailops").exists()


# -- 10, 11. another application's database; read-only commands create nothing ----------


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_applications_sqlite_file_is_refused_and_left_alone(write_config, tmp_path: Path, journal: str) -> None:
    other = tmp_path / "crm.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute(f"PRAGMA journal_mode={journal}")  # WAL: written in the file's header
        connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO customers (name) VALUES ('ACME')")
    before = digest(other)
    result = run("--state", f"sqlite:///{other}", "apply", "-c", str(write_config()), "--auto-approve")
    assert result.exit_code == 1
    assert "is not a mailops state store: it holds other tables (customers)" in result.stderr
    assert digest(other) == before
    with sqlite3.connect(other) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"customers"}


def test_read_only_commands_create_no_state(write_config, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MAILOPS_STATE_URL", raising=False)
    config = str(write_config())
    missing = run("accounts", "-c", "/nonexistent/dir")
    assert missing.exit_code == 1
    assert missing.stderr == "Error: config directory /nonexistent/dir not found\n"
    for command in (["plan", "-c", config], ["accounts", "-c", config], ["validate", "-c", config]):
        assert run(*command).exit_code == 0, command
    assert run("force-unlock", "some-id").exit_code == 1
    assert not (tmp_path / ".mailops").exists()


def test_a_new_sqlite_store_and_its_journal_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    """The store holds who wrote to whom about what (and whole mails while the outbox keeps them)."""
    database = tmp_path / ".mailops" / "state.db"
    previous = os.umask(0o022)
    try:
        store = StateStore.open(f"sqlite:///{database}")
        store.record_account("a@example.com", "manual", {}, "connected")
        with store.session() as session:  # a write under way: the rollback journal is beside the store
            session.execute(sqlalchemy.text("UPDATE accounts SET status = 'error'"))
            modes = {path.name: path.stat().st_mode & 0o777 for path in database.parent.iterdir()}
        store.close()
    finally:
        os.umask(previous)
    assert modes == {"state.db": 0o600, "state.db-journal": 0o600}


# -- 8. import is atomic ----------------------------------------------------------------


def test_import_that_cannot_finish_writing_leaves_the_file_as_it_was(
    engine_env, mail_servers, new_account, monkeypatch
) -> None:
    account = new_account()
    config = spec_files(engine_env, account.yaml(mail_servers))
    assert run("apply", "--auto-approve").exit_code == 0
    accounts_yaml = config / "accounts.yaml"
    accounts_yaml.write_text(accounts_yaml.read_text().replace("    display_name: ", "    display_name: X"))
    accounts_yaml.chmod(0o640)
    before = accounts_yaml.read_bytes()

    def small_disk() -> None:  # a file may not grow past 100 bytes: the write fails midway
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    result = subprocess.run([*MAILOPS, "import"], cwd=engine_env, capture_output=True, text=True, preexec_fn=small_disk)
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: cannot write {Path('config') / 'accounts.yaml'}: File too large")
    assert accounts_yaml.read_bytes() == before
    assert sorted(p.name for p in config.iterdir()) == ["accounts.yaml", "defaults.yaml"]  # no temp file left

    assert run("import").exit_code == 0
    assert accounts_yaml.read_bytes() != before
    assert oct(accounts_yaml.stat().st_mode & 0o777) == "0o640"


# -- 9. secrets in state URLs are never shown -------------------------------------------


@pytest.mark.parametrize(
    "url", ["postgresql://ops:hunter2@pw@127.0.0.1:1/x", "postgresql://ops:hunter2 pw@127.0.0.1:1/x"]
)
def test_a_password_that_parsers_would_split_is_refused_before_use(write_config, url: str) -> None:
    result = run("--state", url, "plan", "-c", str(write_config()))
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: the state URL postgresql://ops:***@127.0.0.1:1/x has an `@` or a space in its user name or "
        "password; percent-encode them (`@` is %40, a space %20)\n"
    )


def test_the_password_in_a_key_value_dsn_is_never_echoed(write_config) -> None:
    result = run("--state", "host=127.0.0.1 port=1 password='S3cr3t pw' dbname=x", "plan", "-c", str(write_config()))
    assert result.exit_code == 1
    assert "S3cr3t" not in result.output
    assert "password=***" in result.stderr


# -- 12, 13. test mails that never arrive; local errors are not the server's -------------


def test_a_test_mail_that_never_arrives_is_not_delivered(engine_env, mail_servers, new_account, monkeypatch) -> None:
    account = new_account("discard")  # the test SMTP server accepts this sender's mail and drops it
    spec_files(engine_env, account.yaml(mail_servers))
    assert run("apply", "--auto-approve", "--config-dir", "config").exit_code == 0
    monkeypatch.setenv("MAILOPS_DELIVERY_WAIT", "1")
    result = run("test-mail", account.address, "--wait")
    assert result.exit_code == 1
    assert "IMAP not_delivered: the server accepted the test mail, but it was not in the inbox" in result.stderr
    assert "Remedy: The server accepted the mail, but it did not arrive" in result.stderr
    state = StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address)
    assert state.last_test_mail_error.startswith("IMAP not_delivered:")


def test_wait_cannot_check_another_mailbox(engine_env, mail_servers, new_account) -> None:
    account, other = new_account(), new_account()
    spec_files(engine_env, account.yaml(mail_servers))
    result = run("test-mail", account.address, "--to", other.address, "--wait")
    assert result.exit_code == 1
    assert "it cannot check another mailbox" in result.stderr
    assert mail_servers.users.messages(other.address) == []  # nothing was sent


@pytest.mark.parametrize("to", ["victim@example.com\r\nBcc: x@example.org", "not-an-address", "jörg@example.com"])
def test_an_invalid_recipient_is_refused_before_sending(engine_env, mail_servers, new_account, to: str) -> None:
    account = new_account()
    spec_files(engine_env, account.yaml(mail_servers))
    result = run("test-mail", account.address, "--to", to)
    assert result.exit_code == 1
    assert result.stderr == f"Error: --to {to!r} is not a valid e-mail address\n"
    assert mail_servers.users.messages(account.address) == []


def test_a_server_without_starttls_is_a_tls_failure_with_its_own_remedy(engine_env, mail_servers, new_account) -> None:
    account = new_account()
    entry = account.yaml(mail_servers).replace(
        f"port: {mail_servers.smtp.starttls_port}", f"port: {mail_servers.smtp.plain_port}"
    )
    spec_files(engine_env, entry)
    result = run("apply", "--auto-approve")
    assert result.exit_code == 1
    assert "SMTP tls: SMTP STARTTLS extension not supported by server." in result.stdout
    assert "Remedy: The server does not offer STARTTLS on this port" in result.stdout


def test_a_non_ascii_password_logs_in(engine_env, mail_servers, new_account, monkeypatch) -> None:
    account = new_account(register=False)
    password = "Grüße-" + account.password
    mail_servers.users.add(account.address, password)
    monkeypatch.setenv(account.env_name, password)
    spec_files(engine_env, account.yaml(mail_servers))
    result = run("apply", "--auto-approve")
    assert result.exit_code == 0, result.output


def test_a_two_line_secret_file_is_a_secret_error_and_one_trailing_newline_is_fine(
    engine_env, mail_servers, new_account
) -> None:
    account = new_account()
    config = spec_files(engine_env, account.yaml(mail_servers, password="{file: pw.txt}"))
    (config / "pw.txt").write_text(f"{account.password}\nX1 CREATE pwned\n")
    assert run("apply", "--auto-approve").exit_code == 1
    state = StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address)
    assert state.last_error_class == "secret"
    assert "a secret must be one line" in state.last_error
    assert account.password not in state.last_error
    assert not (Path(mail_servers.users.root) / "mail" / account.address / "pwned").exists()
    (config / "pw.txt").write_text(f"{account.password}\n")
    assert run("apply", "--auto-approve").exit_code == 0


# -- 15. a saved plan is executed exactly, or refused -----------------------------------


def test_an_edited_saved_plan_is_refused(engine_env, mail_servers, new_account) -> None:
    first, second = new_account(), new_account()
    spec_files(engine_env, first.yaml(mail_servers) + second.yaml(mail_servers))
    assert run("plan", "--out", "plan.json").exit_code == 0
    saved = json.loads((engine_env / "plan.json").read_text())
    saved["changes"] = saved["changes"][:1]
    (engine_env / "plan.json").write_text(json.dumps(saved))
    edited = run("apply", "plan.json")
    assert edited.exit_code == 1
    assert "the plan file was changed after `mailops plan` wrote it" in edited.stderr

    from mailops.engine.plan import BODY_DIGEST, body_digest

    saved[BODY_DIGEST] = body_digest({k: v for k, v in saved.items() if k != BODY_DIGEST})
    (engine_env / "plan.json").write_text(json.dumps(saved))
    forged = run("apply", "plan.json")
    assert forged.exit_code == 1
    assert "the plan file's changes differ from the plan for this spec and live state" in forged.stderr
    assert StateStore.open(f"sqlite:///{engine_env / 'state.db'}").accounts() == []

    assert run("plan", "--out", "plan.json").exit_code == 0
    assert run("apply", "plan.json").exit_code == 0


# -- 16. what apply says when there is nothing to do, on "n", and on Ctrl-C ----------------


def test_apply_without_changes_says_so(engine_env, mail_servers, new_account) -> None:
    spec_files(engine_env, new_account().yaml(mail_servers))
    assert run("apply", "--auto-approve").exit_code == 0
    again = run("apply", "--auto-approve")
    assert again.exit_code == 0
    assert again.stdout == "No changes. The live state matches the spec.\n"


def test_answering_no_cancels(engine_env, mail_servers, new_account) -> None:
    spec_files(engine_env, new_account().yaml(mail_servers))
    pid, terminal = pty.fork()
    if pid == 0:  # the child: mailops apply on a terminal
        os.execvpe(MAILOPS[0], [*MAILOPS, "apply"], dict(os.environ, COLUMNS="100"))
    output = b""
    while b"Apply these changes?" not in output:
        output += os.read(terminal, 4096)
    os.write(terminal, b"n\n")
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "Apply cancelled. Nothing was changed." in output.decode()
    assert StateStore.open(f"sqlite:///{engine_env / 'state.db'}").accounts() == []


def test_ctrl_c_stops_starting_accounts_and_reports_what_was_done(engine_env, mail_servers, new_account) -> None:
    slow = [new_account("slow") for _ in range(4)]  # the test SMTP server takes 1.5 s for their DATA
    spec_files(engine_env, "".join(a.yaml(mail_servers) for a in slow))
    process = subprocess.Popen(
        [*MAILOPS, "apply", "--auto-approve"],
        cwd=engine_env,
        env={**os.environ, "MAILOPS_CONCURRENCY": "1", "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    while not store.accounts():  # the first account is done
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Apply interrupted:" in stdout
    done = {state.address for state in store.accounts()}
    assert 1 <= len(done) <= 2  # the running one finished; none started after Ctrl-C
    assert f"{4 - len(done)} not started" in stdout
    assert run("apply", "--auto-approve").exit_code == 0
    assert len(store.accounts()) == 4


# -- 17, 18. the overview says why, and never cuts an address ---------------------------


def test_the_overview_shows_why_an_account_is_in_error_and_never_cuts_addresses(
    engine_env, mail_servers, new_account, monkeypatch
) -> None:
    account = new_account("a-rather-long-mailbox-name-for-the-support-team")
    monkeypatch.setenv(account.env_name, "wrong")
    spec_files(engine_env, account.yaml(mail_servers))
    run("apply", "--auto-approve")
    monkeypatch.setenv("COLUMNS", "80")
    shown = run("accounts").stdout
    assert account.address in shown
    assert "IMAP auth: [AUTHENTICATIONFAILED]" in shown or "SMTP auth:" in shown
    assert all(len(line) <= 80 for line in shown.splitlines())


# -- 19. documents the code refers to exist ---------------------------------------------


def test_every_document_the_code_names_exists() -> None:
    repo = Path(__file__).resolve().parent.parent
    import re

    for source in (repo / "mailops").rglob("*.py"):
        for name in re.findall(r"\b([\w/-]+\.md)\b", source.read_text(encoding="utf-8")):
            assert (repo / name).exists() or list(repo.rglob(Path(name).name)), f"{source} names {name}"


def test_an_account_at_an_internationalised_domain_works_end_to_end(engine_env, mail_servers, new_account) -> None:
    account = new_account(register=False)
    local = account.address.split("@")[0]
    mail_servers.users.add(f"{local}@xn--bcher-kva.example", account.password)  # what the servers see
    entry = account.yaml(mail_servers, username=f"{local}@bücher.example").replace(
        f"address: {account.address}", f"address: {local}@bücher.example"
    )
    spec_files(engine_env, entry)
    assert run("apply", "--auto-approve").exit_code == 1  # the login name must be what the server knows
    spec_files(
        engine_env, entry.replace(f"username: {local}@bücher.example", f"username: {local}@xn--bcher-kva.example")
    )
    applied = run("apply", "--auto-approve")
    assert applied.exit_code == 0, applied.output
    sent = run("test-mail", f"{local}@bücher.example", "--wait")
    assert sent.exit_code == 0, sent.output
    assert f"sent to {local}@xn--bcher-kva.example and arrived in the inbox" in sent.stdout


# -- found by an attacker's review -------------------------------------------------------


def _corrupt(db: Path, assignment: str) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute(f"UPDATE accounts SET {assignment}")


@pytest.mark.parametrize("assignment", ["settings = 'not json'", "settings = '[1, 2]'", "created_at = 'garbage'"])
@pytest.mark.parametrize("query", ["", "?timeout=5"])  # the fast read, and SQLAlchemy's
def test_a_broken_record_in_the_state_is_one_line(engine_env, mail_servers, new_account, assignment, query) -> None:
    spec_files(engine_env, new_account().yaml(mail_servers))
    assert run("apply", "--auto-approve").exit_code == 0
    _corrupt(engine_env / "state.db", assignment)
    url = f"sqlite:///{engine_env / 'state.db'}{query}"
    for command in (["plan"], ["accounts"], ["import"]):
        result = run("--state", url, *command)
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr.count("\n") == 1, result.stderr
        assert "holds a broken record for account" in result.stderr or "failed:" in result.stderr


def test_a_database_error_after_opening_is_one_line(write_config, tmp_path: Path) -> None:
    db = tmp_path / "half.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute(f"INSERT INTO alembic_version VALUES ('{SCHEMA_REVISION}')")
    planned = run("--state", f"sqlite:///{db}", "plan", "-c", str(write_config()))
    assert planned.stderr == f"Error: cannot read the state store sqlite:///{db}: no such table: accounts\n"
    unlocked = run("--state", f"sqlite:///{db}", "force-unlock", "x")  # through SQLAlchemy
    assert unlocked.stderr == (
        f"Error: the state store sqlite:///{db} failed: (sqlite3.OperationalError) no such table: apply_lock\n"
    )


def _holds_the_lock(db: Path) -> bool:
    """Whether an apply holds the lock of the store ``db``, looked at without creating or upgrading it: a
    look that migrated too would race the apply's own migration of the new store."""
    from mailops.state.schema import StateError

    try:
        return StateStore.open(f"sqlite:///{db}", create=False).current_lock() is not None
    except StateError:  # not created, or still being upgraded
        return False


def _apply_under_way(cwd: Path, concurrency: int) -> subprocess.Popen[str]:
    """`mailops apply` as its own process, returned once it holds the lock and is verifying accounts."""
    process = subprocess.Popen(
        [*MAILOPS, "apply", "--auto-approve"],
        cwd=cwd,
        env={**os.environ, "MAILOPS_CONCURRENCY": str(concurrency)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not _holds_the_lock(cwd / "state.db"):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # planned and approved: the first accounts are logging in (their DATA takes 1.5 s)
    return process


def test_read_only_commands_leave_a_store_with_options_alone(write_config, tmp_path: Path) -> None:
    config = str(write_config())
    url = f"sqlite:///{tmp_path / 's.db'}?timeout=5"
    for command in (["plan", "-c", config], ["accounts", "-c", config], ["force-unlock", "x"]):
        run("--state", url, *command)
    assert not (tmp_path / "s.db").exists()
    StateStore.open(url).close()
    before = digest(tmp_path / "s.db")
    for command in (["plan", "-c", config], ["accounts", "-c", config]):
        assert run("--state", url, *command).exit_code == 0
        assert run("--state", url.partition("?")[0], *command).exit_code == 0
    assert digest(tmp_path / "s.db") == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("s.db")) == ["s.db"]


def test_a_percent_encoded_state_path_is_the_same_file_for_every_command(engine_env, mail_servers, new_account) -> None:
    spec_files(engine_env, new_account().yaml(mail_servers))
    url = f"sqlite:///{engine_env / 'my%20state.db'}"
    assert run("--state", url, "apply", "--auto-approve").exit_code == 0
    assert (engine_env / "my state.db").exists()
    planned = run("--state", url, "plan", "--detailed-exitcode")
    assert planned.exit_code == 0, planned.output


def test_ctrl_c_with_nothing_left_to_start_still_exits_130(engine_env, mail_servers, new_account) -> None:
    slow = [new_account("slow") for _ in range(2)]
    spec_files(engine_env, "".join(a.yaml(mail_servers) for a in slow))
    process = _apply_under_way(engine_env, concurrency=2)  # both accounts are under way
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stdout + stderr
    assert "Apply interrupted: " in stdout


def test_a_second_ctrl_c_stops_at_once(engine_env, mail_servers, new_account) -> None:
    slow = [new_account("slow") for _ in range(3)]
    spec_files(engine_env, "".join(a.yaml(mail_servers) for a in slow))
    process = _apply_under_way(engine_env, concurrency=1)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stdout + stderr
    assert "Stopped at once." in stdout
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    assert store.current_lock() is None  # released on the way out
    assert run("apply", "--auto-approve").exit_code == 0
    assert len(store.accounts()) == 3


SHARED_ACCOUNTS = """\
accounts:
  - address: {a}
    provider: manual
    display_name: A
    username: {a}
    password: {{env: {a_env}}}
    imap: &srv {{host: 127.0.0.1, port: {imap}, encryption: ssl}}
    smtp: &out {{host: 127.0.0.1, port: {smtp}, encryption: starttls}}
  - address: {b}
    provider: manual
    display_name: B
    username: {b}
    password: {{env: {b_env}}}
    imap: *srv
    smtp: *out
"""


def test_import_never_writes_through_a_shared_anchor(engine_env, mail_servers, new_account) -> None:
    a, b = new_account(), new_account()
    imap, smtp = mail_servers.ports("ssl", "starttls")
    config = engine_env / "config"
    config.mkdir()
    text = SHARED_ACCOUNTS.format(a=a.address, b=b.address, a_env=a.env_name, b_env=b.env_name, imap=imap, smtp=smtp)
    (config / "accounts.yaml").write_text(text)
    (config / "defaults.yaml").write_text(f"defaults: {{email: {a.address}, sender_name: T}}\n")
    assert run("apply", "--auto-approve").exit_code == 0
    # b's live IMAP settings drift; a's stay as declared.
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    drifted = dict(store.account(b.address).settings)
    drifted["imap"] = {**drifted["imap"], "port": mail_servers.dovecot.plain_port, "encryption": "starttls"}
    store.record_account(b.address, "manual", drifted, "connected")
    imported = run("import")
    assert imported.exit_code == 0, imported.output
    assert f"~ {b.address}: imap.port, imap.encryption" in imported.stdout
    replanned = run("plan", "--detailed-exitcode")
    assert replanned.exit_code == 0, replanned.stdout  # a is untouched, b matches its live state
    written = (config / "accounts.yaml").read_text()
    assert f"imap: {{host: 127.0.0.1, port: {imap}, encryption: ssl}}" in written  # a's own, unchanged
    assert "smtp: *out" in written  # what is still shared stays shared


def test_import_that_would_write_an_invalid_spec_writes_nothing(engine_env, mail_servers, new_account) -> None:
    account = new_account()
    config = spec_files(engine_env, account.yaml(mail_servers))
    assert run("apply", "--auto-approve").exit_code == 0
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    drifted = {**store.account(account.address).settings, "ticket": {"enabled": True, "default_project": "NOPE"}}
    store.record_account(account.address, "manual", drifted, "connected")
    before = (config / "accounts.yaml").read_bytes()
    result = run("import")
    assert result.exit_code == 1
    assert "does not make a valid accounts.yaml, so nothing was written" in result.stderr
    assert "unknown project `NOPE`" in result.stderr
    assert (config / "accounts.yaml").read_bytes() == before


def test_plan_out_follows_a_symlink_and_refuses_what_is_not_a_writable_file(write_config, tmp_path: Path) -> None:
    config, state = str(write_config()), f"sqlite:///{tmp_path / 'state.db'}"
    (tmp_path / "plans").mkdir()
    (tmp_path / "plan.json").symlink_to("plans/current.json")
    assert run("--state", state, "plan", "-c", config, "--out", "plan.json").exit_code == 0
    assert (tmp_path / "plan.json").is_symlink() and (tmp_path / "plans" / "current.json").is_file()
    os.mkfifo(tmp_path / "fifo")
    fifo = run("--state", state, "plan", "-c", config, "--out", "fifo")
    assert fifo.stderr == "Error: cannot write fifo: it is a named pipe (FIFO), not a regular file\n"
    (tmp_path / "locked.json").write_text("{}")
    (tmp_path / "locked.json").chmod(0o444)
    locked = run("--state", state, "plan", "-c", config, "--out", "locked.json")
    assert locked.stderr == "Error: cannot write locked.json: it is read-only; the file is unchanged\n"
    assert (tmp_path / "locked.json").read_text() == "{}"


@pytest.mark.parametrize("edit", [{"format_version": 3.0}, {"note": "extra"}, {"summary": {"add": 0}}])
def test_a_saved_plan_with_edited_metadata_is_refused(engine_env, mail_servers, new_account, edit) -> None:
    spec_files(engine_env, new_account().yaml(mail_servers))
    assert run("plan", "--out", "plan.json").exit_code == 0
    saved = {**json.loads((engine_env / "plan.json").read_text()), **edit}
    from mailops.engine.plan import BODY_DIGEST, body_digest

    saved[BODY_DIGEST] = body_digest({k: v for k, v in saved.items() if k != BODY_DIGEST})
    (engine_env / "plan.json").write_text(json.dumps(saved))
    result = run("apply", "plan.json")
    assert result.exit_code == 1, result.output
    assert StateStore.open(f"sqlite:///{engine_env / 'state.db'}").accounts() == []
