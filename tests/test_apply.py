"""plan → apply → plan against real Dovecot and aiosmtpd on 127.0.0.1."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mailops.cli import app
from mailops.state import StateStore
from tests.conftest import spec_files
from tests.servers import HOST, free_port

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_plan_apply_plan_converges(engine_env, mail_servers, new_account) -> None:
    first, second, third = new_account(), new_account(), new_account()
    spec_files(
        engine_env,
        first.yaml(mail_servers, imap="ssl", smtp="starttls")
        + second.yaml(mail_servers, imap="starttls", smtp="ssl")
        + third.yaml(mail_servers, imap="none", smtp="none"),
        policies="policies: {require_encryption: false}\n",
    )
    planned = run("plan", "--detailed-exitcode")
    assert planned.exit_code == 2, planned.output
    assert "Plan: 3 to add, 0 to change, 0 to delete." in planned.stdout

    applied = run("apply", "--auto-approve")
    assert applied.exit_code == 0, applied.output
    assert "Apply complete: 3 account(s) done." in applied.stdout

    again = run("plan", "--detailed-exitcode")
    assert again.exit_code == 0, again.output
    assert "No changes." in again.stdout

    # Each account's test mail arrived in its own inbox.
    for account in (first, second, third):
        subjects = [m["Subject"] for m in mail_servers.users.messages(account.address)]
        assert subjects == [f"mailops test mail for {account.address}"]

    overview = json.loads(run("accounts", "--json").stdout)
    assert [(row["address"], row["status"], row["last_test_mail"]["ok"]) for row in overview] == sorted(
        (a.address, "connected", True) for a in (first, second, third)
    )


def test_wrong_password_fails_that_account_only(engine_env, mail_servers, new_account, monkeypatch) -> None:
    good, bad = new_account(), new_account()
    monkeypatch.setenv(bad.env_name, "not-the-password")
    spec_files(engine_env, good.yaml(mail_servers) + bad.yaml(mail_servers))
    applied = run("apply", "--auto-approve")
    assert applied.exit_code == 1
    assert "Apply complete: 1 succeeded, 1 failed." in applied.stdout
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    states = {s.address: s for s in store.accounts()}
    assert states[good.address].status == "connected"
    assert states[bad.address].status == "error"
    assert states[bad.address].last_error_class == "auth"
    assert "refused the login" in applied.stdout  # the remedy is shown
    # The failed account is retried by the next plan.
    replanned = run("plan", "--detailed-exitcode")
    assert replanned.exit_code == 2
    assert f"~ {bad.address}" in replanned.stdout
    assert "retry: last verification failed (auth)" in replanned.stdout


def test_server_down_is_a_connect_failure(engine_env, mail_servers, new_account) -> None:
    account = new_account()
    dead_port = free_port()
    entry = account.yaml(mail_servers).replace(f"port: {mail_servers.dovecot.tls_port}", f"port: {dead_port}")
    spec_files(engine_env, entry)
    applied = run("apply", "--auto-approve")
    assert applied.exit_code == 1
    state = StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address)
    assert (state.status, state.last_error_class) == ("error", "connect")


def test_tls_against_a_plain_port_is_a_tls_failure(engine_env, mail_servers, new_account) -> None:
    account = new_account()
    entry = account.yaml(mail_servers, imap="starttls").replace("encryption: starttls}", "encryption: ssl}", 1)
    spec_files(engine_env, entry)
    assert f"port: {mail_servers.dovecot.plain_port}, encryption: ssl" in entry
    run("apply", "--auto-approve")
    state = StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address)
    assert state.last_error_class == "tls"


def test_self_signed_certificate_without_the_ca_is_a_tls_failure(
    engine_env, mail_servers, new_account, monkeypatch
) -> None:
    monkeypatch.delenv("MAILOPS_CA_FILE")
    account = new_account()
    spec_files(engine_env, account.yaml(mail_servers))
    assert run("apply", "--auto-approve").exit_code == 1
    state = StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address)
    assert state.last_error_class == "tls"
    assert "certificate verify failed" in state.last_error


def test_refused_sender_and_recipient_are_classified(engine_env, mail_servers, new_account) -> None:
    sender = new_account("refused-sender")
    data = new_account("reject-data")
    other = new_account()
    spec_files(
        engine_env,
        sender.yaml(mail_servers) + data.yaml(mail_servers) + other.yaml(mail_servers),
        policies="policies: {test_mail: {to: unknown-person@example.com}}\n",
    )
    assert run("apply", "--auto-approve").exit_code == 1
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    classes = {s.address: s.last_error_class for s in store.accounts()}
    assert classes == {
        sender.address: "sender_refused",
        data.address: "recipient_refused",  # the recipient is refused before DATA
        other.address: "recipient_refused",
    }
    assert "550 5.1.1" in store.account(other.address).last_test_mail_error


def test_data_refused_is_classified(engine_env, mail_servers, new_account) -> None:
    account = new_account("reject-data")
    spec_files(engine_env, account.yaml(mail_servers))
    assert run("apply", "--auto-approve").exit_code == 1
    state = StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address)
    assert state.last_error_class == "data_refused"
    assert "554 5.6.0" in state.last_test_mail_error


def test_secrets_never_leave_the_process(engine_env, mail_servers, new_account, monkeypatch) -> None:
    good, bad = new_account(), new_account()
    monkeypatch.setenv(bad.env_name, "wrong-" + bad.password)
    spec_files(engine_env, good.yaml(mail_servers) + bad.yaml(mail_servers))
    outputs = [
        run("plan", "--out", "saved.plan"),
        run("plan", "--json"),
        run("apply", "--auto-approve"),
        run("accounts", "--json"),
        run("accounts"),
        run("plan"),
    ]
    blobs = [o.output.encode() for o in outputs]
    blobs += [p.read_bytes() for p in engine_env.rglob("*") if p.is_file()]
    for secret in (good.password, bad.password):
        assert not any(secret.encode() in blob for blob in blobs), "a secret leaked"
    assert any(good.env_name.encode() in p.read_bytes() for p in engine_env.glob("state.db*"))


def test_stale_saved_plan_is_refused(engine_env, mail_servers, new_account) -> None:
    first, second = new_account(), new_account()
    spec_files(engine_env, first.yaml(mail_servers))
    assert run("plan", "--out", "empty-state.plan").exit_code == 0
    assert run("apply", "--auto-approve").exit_code == 0
    refused = run("apply", "empty-state.plan")
    assert refused.exit_code == 1
    assert "the live state changed since the plan was made" in refused.stderr

    spec_files(engine_env, first.yaml(mail_servers) + second.yaml(mail_servers))
    assert run("plan", "--out", "current.plan").exit_code == 0
    spec_files(engine_env, first.yaml(mail_servers))
    refused = run("apply", "current.plan")
    assert refused.exit_code == 1
    assert "the spec changed since the plan was made" in refused.stderr

    spec_files(engine_env, first.yaml(mail_servers) + second.yaml(mail_servers))
    applied = run("apply", "current.plan")
    assert applied.exit_code == 0, applied.output


def test_concurrent_apply_is_blocked_by_the_lock(engine_env, mail_servers, new_account) -> None:
    account = new_account()
    spec_files(engine_env, account.yaml(mail_servers))
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    holder = store.acquire_lock(owner="ci-job-41")
    blocked = run("apply", "--auto-approve")
    assert blocked.exit_code == 1
    assert f"another apply is running: lock {holder.lock_id} held by ci-job-41" in blocked.stderr
    assert store.account(account.address) is None

    unlocked = run("force-unlock", holder.lock_id)
    assert unlocked.exit_code == 0
    assert run("apply", "--auto-approve").exit_code == 0


def test_delete_needs_confirmation(engine_env, mail_servers, new_account) -> None:
    keep = [new_account() for _ in range(3)]
    gone = new_account()
    spec_files(engine_env, "".join(a.yaml(mail_servers) for a in keep + [gone]))
    assert run("apply", "--auto-approve").exit_code == 0

    spec_files(engine_env, "".join(a.yaml(mail_servers) for a in keep))
    planned = run("plan")
    assert f"- {gone.address} (manual)  BLOCKED: needs --confirm-delete {gone.address}" in planned.stdout
    refused = run("apply", "--auto-approve")
    assert refused.exit_code == 1
    assert "refusing to apply; nothing was changed" in refused.stderr
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    assert store.account(gone.address) is not None

    applied = run("apply", "--auto-approve", "--confirm-delete", gone.address)
    assert applied.exit_code == 0, applied.output
    assert store.account(gone.address) is None
    assert gone.address not in run("accounts").stdout
    # History stays: the row is kept, marked deleted.
    assert [s.address for s in store.accounts(include_deleted=True) if s.deleted_at] == [gone.address]


def test_deleting_too_many_accounts_needs_force(engine_env, mail_servers, new_account) -> None:
    accounts = [new_account() for _ in range(3)]
    spec_files(engine_env, "".join(a.yaml(mail_servers) for a in accounts), policies="policies: {allow_delete: true}\n")
    assert run("apply", "--auto-approve").exit_code == 0
    spec_files(engine_env, accounts[0].yaml(mail_servers), policies="policies: {allow_delete: true}\n")
    refused = run("apply", "--auto-approve")
    assert refused.exit_code == 1
    assert "deletes 2 of 3 accounts (67%), more than policies.max_delete_fraction (34%)" in refused.stderr
    assert run("apply", "--auto-approve", "--force").exit_code == 0
    assert run("plan", "--detailed-exitcode").exit_code == 0


def test_changing_a_connection_field_verifies_again(engine_env, mail_servers, new_account) -> None:
    account = new_account()
    spec_files(engine_env, account.yaml(mail_servers, smtp="starttls"))
    assert run("apply", "--auto-approve").exit_code == 0
    spec_files(engine_env, account.yaml(mail_servers, smtp="ssl"))
    planned = run("plan", "--json")
    change = json.loads(planned.stdout)["changes"][0]
    assert change["actions"] == ["update"] and change["verify"] is True
    assert {f["path"] for f in change["fields"]} == {"smtp.port", "smtp.encryption"}
    assert change["after"]["password"] == "(sensitive)"
    assert run("apply", "--auto-approve").exit_code == 0
    assert len(mail_servers.users.messages(account.address)) == 2  # a second test mail
    # A change that does not touch the connection is stored without a new test mail.
    spec_files(engine_env, account.yaml(mail_servers, smtp="ssl", signature='"Regards"'))
    assert run("apply", "--auto-approve").exit_code == 0
    assert len(mail_servers.users.messages(account.address)) == 2
    assert run("plan", "--detailed-exitcode").exit_code == 0


def test_test_mail_command_round_trip(engine_env, mail_servers, new_account) -> None:
    account, other = new_account(), new_account()
    spec_files(engine_env, account.yaml(mail_servers), policies="employees:\n  alice: {name: Alice}\n")
    sent = run("test-mail", account.address, "--wait")
    assert sent.exit_code == 0, sent.output
    assert "arrived in the inbox" in sent.stdout
    # To another address it is sending: someone must act (the spec makes the command line no administrator).
    nobody = run("test-mail", account.address, "--to", other.address)
    assert nobody.exit_code == 1 and nobody.stderr.startswith("Error: say who acts: --as EMPLOYEE or MAILOPS_USER")
    itself = run("test-mail", account.address, "--to", account.address, "--wait")  # to itself: a check
    assert itself.exit_code == 0, itself.output
    to_other = run("--as", "alice", "test-mail", account.address, "--to", other.address)
    assert to_other.exit_code == 0
    assert len(mail_servers.users.messages(other.address)) == 1
    refused = run("--as", "alice", "test-mail", account.address, "--to", "unknown-x@example.com")
    assert refused.exit_code == 1
    assert "recipient_refused" in refused.stderr


def test_unset_password_variable_is_a_secret_failure(engine_env, mail_servers, new_account, monkeypatch) -> None:
    account = new_account()
    monkeypatch.delenv(account.env_name)
    spec_files(engine_env, account.yaml(mail_servers))
    applied = run("apply", "--auto-approve")
    assert applied.exit_code == 1
    state = StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address)
    assert state.last_error_class == "secret"
    assert f"environment variable {account.env_name} is not set" in state.last_error


def test_oauth_accounts_are_planned_as_needing_consent(engine_env, mail_servers, new_account) -> None:
    account = new_account()
    oauth = "  - address: team@example.org\n    provider: google\n"
    spec_files(engine_env, account.yaml(mail_servers) + oauth)
    assert run("apply", "--auto-approve").exit_code == 0
    planned = run("plan", "--detailed-exitcode")
    assert planned.exit_code == 0
    assert "! team@example.org (google)" in planned.stdout
    assert "pending consent: run `mailops connect team@example.org`" in planned.stdout
    assert "1 account(s) need action." in planned.stdout


def test_a_server_that_never_answers_is_a_timeout(engine_env, mail_servers, new_account, monkeypatch) -> None:
    import socket

    monkeypatch.setenv("MAILOPS_COMMAND_TIMEOUT", "1")
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never greets
        silent.bind((HOST, 0))
        silent.listen(8)
        account = new_account()
        entry = account.yaml(mail_servers, imap="none").replace(
            f"port: {mail_servers.dovecot.plain_port}", f"port: {silent.getsockname()[1]}"
        )
        spec_files(engine_env, entry, policies="policies: {require_encryption: false}\n")
        assert run("apply", "--auto-approve").exit_code == 1
    state = StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address)
    assert state.last_error_class == "timeout"


def test_switching_a_manual_account_to_oauth_needs_consent(engine_env, mail_servers, new_account) -> None:
    account = new_account()
    spec_files(engine_env, account.yaml(mail_servers))
    assert run("apply", "--auto-approve").exit_code == 0
    oauth = f"  - address: {account.address}\n    provider: microsoft\n"
    spec_files(engine_env, oauth)
    assert run("apply", "--auto-approve").exit_code == 0
    state = StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address)
    assert (state.provider, state.status) == ("microsoft", "pending_consent")
    assert f"! {account.address} (microsoft)" in run("plan").stdout


def test_a_failed_account_is_verified_again_with_any_change(engine_env, mail_servers, new_account, monkeypatch) -> None:
    account = new_account()
    monkeypatch.setenv(account.env_name, "wrong")
    spec_files(engine_env, account.yaml(mail_servers))
    assert run("apply", "--auto-approve").exit_code == 1
    monkeypatch.setenv(account.env_name, account.password)
    spec_files(engine_env, account.yaml(mail_servers, signature='"Regards"'))
    change = json.loads(run("plan", "--json").stdout)["changes"][0]
    assert change["verify"] is True and [f["path"] for f in change["fields"]] == ["signature"]
    assert run("apply", "--auto-approve").exit_code == 0
    assert StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address).status == "connected"


def test_no_test_mail_when_the_policy_turns_it_off(engine_env, mail_servers, new_account) -> None:
    account = new_account()
    spec_files(engine_env, account.yaml(mail_servers), policies="policies: {test_mail: {on_apply: false}}\n")
    assert run("apply", "--auto-approve").exit_code == 0
    assert mail_servers.users.messages(account.address) == []
    state = StateStore.open(f"sqlite:///{engine_env / 'state.db'}").account(account.address)
    assert (state.status, state.last_verified_at is not None, state.last_test_mail_at) == ("connected", True, None)
