"""The notebooks in notebooks/, run top to bottom under nbval against the real local servers.

The notebooks are committed without outputs, and nbval checks a cell's output only against the
output stored in the notebook. So each run works on a copy: the cells marked
``# NBVAL_CHECK_OUTPUT`` (the plan, the connect outcome, the class summary...) get their expected
output from `expected_outputs` below, written out here as a reader would read it, and nbval
compares what the cell prints with it, after the sanitizers in notebooks/sanitize.cfg (ports, times,
temp paths). Every other cell must run without error. A notebook whose marked cells changed in
number fails before it runs.

The fixture prepares what a notebook needs: mailboxes on Dovecot and the SMTP server, an OAuth user
and app on the local identity provider (which also plays the person who approves the device code),
a spec, a state store, the parameters in environment variables, and private Jupyter, IPython and
matplotlib directories.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from sqlalchemy import update

from mailops.outbox.classify import remedy
from mailops.state import StateStore
from mailops.state.outbox import NewAttempt, Outbox, OutboxStatus, Outcome
from mailops.state.tables import OutboxRow
from mailops.state.tokens import make_key
from tests.conftest import REPO
from tests.servers import HOST

NOTEBOOKS = REPO / "notebooks"
SANITIZE = NOTEBOOKS / "sanitize.cfg"
NAMES = ("connect_account.ipynb", "send_test_mail.ipynb", "plan_apply.ipynb", "outbox_errors.ipynb")
CHECK = "# NBVAL_CHECK_OUTPUT"
CLIENT_ID = "mailops-notebook-tests"
SHOP, INFO, TEAM, HIDDEN = (f"nb-{name}@example.com" for name in ("shop", "info", "team", "hidden"))


def check_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.startswith(CHECK)]


# --- the committed notebooks -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_committed_notebook_holds_no_outputs_and_says_what_it_is_for(name: str) -> None:
    raw = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    notebook = nbformat.reads(json.dumps(raw), as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert (cell.outputs, cell.execution_count) == ([], None), f"{name}: strip the outputs of:\n{cell.source}"
    # A saved widget state would hold what was typed into the widgets (a password field too).
    assert "widgets" not in notebook.metadata, f"{name}: saved with widget state"
    assert notebook.metadata.kernelspec.name == "python3"
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    assert len(check_cells(notebook)) == len(expected_outputs(name, ports=(0, 0, 0, 0)))


# --- running them ------------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    config: Path
    env: dict[str, str]
    ports: tuple[int, int, int, int]  # IMAP ssl, IMAP plain, SMTP starttls, SMTP ssl


@pytest.fixture(scope="session")
def world(mail_servers, identity_provider) -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="mailops-notebooks-"))
    passwords = {SHOP: "shop-" + os.urandom(6).hex(), INFO: "info-" + os.urandom(6).hex()}
    passwords[HIDDEN] = "hidden-" + os.urandom(6).hex()
    for address, password in passwords.items():
        mail_servers.users.add(address, password)
    mail_servers.users.add_oauth(TEAM)
    identity_provider.add_client(CLIENT_ID)
    interval = identity_provider.device_interval
    identity_provider.device_interval = 1  # msal polls once a second
    ports = (mail_servers.dovecot.tls_port, mail_servers.dovecot.plain_port)
    ports += (mail_servers.smtp.starttls_port, mail_servers.smtp.tls_port)
    config = root / "config"
    (config / "secrets").mkdir(parents=True)
    (config / "secrets" / "nb-info.password").write_text(passwords[INFO] + "\n", encoding="utf-8")
    ssl_starttls = f"imap: {{host: {HOST}, port: {ports[0]}, encryption: ssl}}, " + (
        f"smtp: {{host: {HOST}, port: {ports[2]}, encryption: starttls}}"
    )
    starttls_ssl = f"imap: {{host: {HOST}, port: {ports[1]}, encryption: starttls}}, " + (
        f"smtp: {{host: {HOST}, port: {ports[3]}, encryption: ssl}}"
    )
    (config / "accounts.yaml").write_text(
        "accounts:\n"
        f"  - {{address: {SHOP}, provider: manual, display_name: Shop, username: {SHOP},"
        f" password: {{env: NB_SHOP_PASSWORD}}, {ssl_starttls}}}\n"
        f"  - {{address: {INFO}, provider: manual, display_name: Info, username: {INFO},"
        f" password: {{file: secrets/nb-info.password}}, {starttls_ssl}}}\n"
        f"  - {{address: {TEAM}, provider: microsoft, {ssl_starttls}}}\n"
        f"  - {{address: {HIDDEN}, provider: manual, display_name: Hidden, username: {HIDDEN},"
        f" password: {{env: NB_HIDDEN_PASSWORD}}, visible_to: [bob], {ssl_starttls}}}\n"
        f"projects:\n  SHOP: {{email: {SHOP}}}\n",
        encoding="utf-8",
    )
    (config / "defaults.yaml").write_text(
        f"defaults: {{email: {SHOP}, sender_name: Shop}}\n"
        "employees:\n  alice: {name: Alice, groups: [support-team]}\n  bob: {name: Bob}\n"
        f"oauth:\n  microsoft: {{client_id: {CLIENT_ID}, authority: '{identity_provider.base_url}'}}\n",
        encoding="utf-8",
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MAILOPS_", "PYTEST_"))}
    # Jupyter, IPython and matplotlib write into these, never into the home directory. matplotlib's
    # directory is shared by the runs: its font cache is built once.
    for variable, name in (
        ("HOME", "home"),
        ("IPYTHONDIR", "ipython"),
        ("JUPYTER_CONFIG_DIR", "jupyter-config"),
        ("JUPYTER_DATA_DIR", "jupyter-data"),
        ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
        ("MPLCONFIGDIR", "matplotlib"),
    ):
        (root / name).mkdir()
        env[variable] = str(root / name)
    env.update(
        {
            "MAILOPS_CONFIG_DIR": str(config),
            "MAILOPS_USER": "alice",
            "MAILOPS_CA_FILE": str(mail_servers.cert),
            "MAILOPS_SECRET_KEY": make_key(),
            "MAILOPS_CONNECT_TIMEOUT": "5",
            "MAILOPS_COMMAND_TIMEOUT": "10",
            "NB_SHOP_PASSWORD": passwords[SHOP],
            "NB_HIDDEN_PASSWORD": passwords[HIDDEN],
            "MAILOPS_NOTEBOOK_RUN": "yes",
        }
    )
    yield World(root, config, env, ports)
    identity_provider.device_interval = interval
    shutil.rmtree(root, ignore_errors=True)


def expected_outputs(name: str, ports: tuple[int, int, int, int]) -> list[str]:
    """What each NBVAL_CHECK_OUTPUT cell of ``name`` prints, in order, as the reader should see it."""
    imap_ssl, imap_plain, smtp_starttls, smtp_ssl = (f"{HOST}:{port}" for port in ports)
    legend = (
        "mailops will perform the following actions:\n"
        "  + create    ~ update in place    - delete    ! needs a person's action\n"
    )
    verify = "      (verify IMAP and SMTP login, send test mail)\n"
    if name == "connect_account.ipynb":
        return [
            f"✔ {TEAM} is connected: IMAP and SMTP log in with XOAUTH2; test mail sent to {TEAM}.\n"
            f"Consent: by {TEAM}, token stored (encrypted)\n"
        ]
    if name == "send_test_mail.ipynb":
        return [f"✔ Test mail from {SHOP} sent to {SHOP} and arrived in the inbox.\n"]
    if name == "plan_apply.ipynb":
        plan = (
            f"{legend}\n"
            f"  + {HIDDEN} (manual)\n      + imap: {imap_ssl} ssl\n      + smtp: {smtp_starttls} starttls\n{verify}"
            f"  + {INFO} (manual)\n      + imap: {imap_plain} starttls\n      + smtp: {smtp_ssl} ssl\n{verify}"
            f"  + {SHOP} (manual)\n      + imap: {imap_ssl} ssl\n      + smtp: {smtp_starttls} starttls\n{verify}"
            f"  + {TEAM} (microsoft)\n      + imap: {imap_ssl} ssl\n      + smtp: {smtp_starttls} starttls\n"
            f"      then needs OAuth consent: run `mailops connect {TEAM}`\n\n"
            "Plan: 4 to add, 0 to change, 0 to delete.\n"
        )
        applied = (
            " | account | status | test mail | problem\n"
            f"+ | {HIDDEN} | connected | sent to {HIDDEN} |\n"
            f"+ | {INFO} | connected | sent to {INFO} |\n"
            f"+ | {SHOP} | connected | sent to {SHOP} |\n"
            f"+ | {TEAM} | pending_consent |  |\n"
            "✔ Apply complete: 4 account(s) done.\n\n"
            f"{legend}\n"
            f"  ! {TEAM} (microsoft)\n      pending consent: run `mailops connect {TEAM}`\n\n"
            "No changes. The live state matches the spec. 1 account(s) need action.\n"
        )
        return [plan, applied]
    if name == "outbox_errors.ipynb":
        return [
            "5 mails: 2 sent, 3 failed (60.0% failed)\n"
            "class | failures | share | remedy\n"
            f"recipients_failed | 2 | 66.7% | {remedy('recipients_failed').short}\n"
            f"mailbox_full | 1 | 33.3% | {remedy('mailbox_full').short}\n"
        ]
    raise ValueError(name)


def write_outbox(store: StateStore) -> None:
    """Six mails: five of alice's accounts (3 failed), one failure of the account only bob may see."""
    outbox = Outbox(store)
    mails = [
        (SHOP, "SHOP", "kunde@gmx.de", "sent", None),
        (SHOP, "SHOP", "unknown@gmx.de", "failed", "recipients_failed"),
        (SHOP, None, "voll@web.de", "failed", "mailbox_full"),
        (INFO, None, "b@web.de", "sent", None),
        (INFO, None, "weg@t-online.de", "failed", "recipients_failed"),
        (HIDDEN, None, "c@gmx.de", "failed", "policy_rejection"),
    ]
    for number, (account, project, to, status, error_class) in enumerate(mails):
        attempt = NewAttempt(
            account=account,
            sender=account,
            sender_name="",
            to=[to],
            cc=[],
            bcc=[],
            subject=f"Mail {number}",
            preview="",
            message_id=f"<nb{number}@example.com>",
            project=project,
        )
        [entry] = outbox.queue([attempt])
        reply = f"550 5.1.1 <{to}>: refused" if status == "failed" else None
        outbox.finish([(entry, Outcome(OutboxStatus(status), reply=reply, error_class=error_class))])
        with store.session() as session:
            moment = dt.datetime(2026, 3, 2, 9, number, tzinfo=dt.UTC)
            session.execute(update(OutboxRow).where(OutboxRow.id == entry).values(created_at=moment))


def run_notebook(world: World, name: str, **env: str) -> None:
    """Run a copy of notebook ``name`` with its expected outputs under nbval; fail with nbval's report."""
    directory = world.root / name.removesuffix(".ipynb")
    directory.mkdir()
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    expected = expected_outputs(name, world.ports)
    cells = check_cells(notebook)
    assert len(cells) == len(expected), f"{name}: {len(cells)} cells marked {CHECK}, {len(expected)} outputs expected"
    for number, (cell, text) in enumerate(zip(cells, expected, strict=True), start=1):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        cell.execution_count = number  # nbval compares the outputs of cells that ran
    nbformat.write(notebook, directory / name)
    # An empty ini: the run must not pick up this repository's pytest settings.
    (directory / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with"]
    command += [str(SANITIZE), "--nbval-cell-timeout=600", "-p", "no:cacheprovider", "-q", "-rf", "--color=no", name]
    done = subprocess.run(
        command,
        cwd=directory,
        env={**world.env, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{name} failed under nbval:\n{done.stdout}\n{done.stderr}"


def test_plan_apply_notebook(world: World) -> None:
    run_notebook(world, "plan_apply.ipynb", MAILOPS_STATE_URL=f"sqlite:///{world.root / 'plan.db'}")


def test_send_test_mail_notebook(world: World) -> None:
    run_notebook(
        world,
        "send_test_mail.ipynb",
        MAILOPS_STATE_URL=f"sqlite:///{world.root / 'test-mail.db'}",
        MAILOPS_NOTEBOOK_ACCOUNT=SHOP,
        MAILOPS_NOTEBOOK_RECIPIENT=SHOP,
        MAILOPS_NOTEBOOK_WAIT="yes",
    )


def test_connect_account_notebook(world: World, identity_provider) -> None:
    """The person approves the device code the notebook shows, as nb-team, on the identity provider."""
    stop = threading.Event()
    approver = threading.Thread(target=approve_device_codes, args=(identity_provider, TEAM, stop), daemon=True)
    approver.start()
    try:
        run_notebook(
            world,
            "connect_account.ipynb",
            MAILOPS_STATE_URL=f"sqlite:///{world.root / 'connect.db'}",
            MAILOPS_NOTEBOOK_ACCOUNT=TEAM,
        )
    finally:
        stop.set()
        approver.join(5)


def approve_device_codes(identity_provider, login: str, stop: threading.Event) -> None:
    """Approve each device code of the notebooks' app that waits, as ``login`` (the code is shown only in
    the kernel's widget, which nobody reads here; the provider knows which codes wait)."""
    while not stop.wait(0.2):
        for user_code in identity_provider.pending_device_codes(CLIENT_ID):
            try:
                identity_provider.approve_device_code(user_code, login)
            except KeyError:  # expired or taken meanwhile: the notebook's own assertion says what happened
                pass


def test_outbox_errors_notebook(world: World) -> None:
    state = world.root / "outbox.db"
    write_outbox(StateStore.open(f"sqlite:///{state}", create=True))
    run_notebook(world, "outbox_errors.ipynb", MAILOPS_STATE_URL=f"sqlite:///{state}")
