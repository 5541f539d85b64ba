"""`mailops run` when things go wrong on the way, end to end against the real Dovecot and SMTP server: an
IMAP connection cut in the middle of a UID FETCH, `delete_after_import` on a server without UIDPLUS, and
an account deleted from the spec while its mail keeps arriving."""

from __future__ import annotations

import datetime as dt
import json
import select
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests import test_worker_replies as replies
from tests.conftest import MailServers, ServerAccount
from tests.servers import HOST, Dovecot, MailUsers
from tests.test_send import outbox_rows, received
from tests.test_worker import Mailbox, applied, mail, rows, run, stored, ticket

# -- a connection cut in the middle of a UID FETCH ----------------------------------------------------

BODY_LITERAL = b"BODY[] {"  # how Dovecot starts each message of a `UID FETCH ... BODY.PEEK[]` answer


class CuttingProxy:
    """IMAPS on 127.0.0.1 in front of Dovecot's plain port: it ends TLS itself, so that it sees the IMAP
    bytes, and forwards them unchanged both ways. Armed with `cut_into` = n, it forwards the server's
    answer up to 40 bytes into the n-th message body of a connection, then shuts both TCP connections
    down without a TLS goodbye: a real cut in the middle of a UID FETCH."""

    def __init__(self, upstream_port: int, cert: Path, key: Path):
        self.upstream_port = upstream_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.cut_into: int | None = None
        self.cuts = 0  # connections cut so far
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn(self._accept)

    def stop(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop (close alone does not)
        self.listener.close()  # connections end with their peers
        for thread in self.threads:
            thread.join(10)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _peer = self.listener.accept()
            except OSError:  # closed: the proxy stops
                return
            self._spawn(self._serve, connection, self.cut_into)

    def _serve(self, connection: socket.socket, cut_into: int | None) -> None:
        # One thread per connection, reading both sides in turn: an SSL socket must not be read and
        # written by two threads at once. Blocking sendall: what was forwarded is in the kernel before a cut.
        try:
            client = self.context.wrap_socket(connection, server_side=True)
        except (OSError, ssl.SSLError):
            connection.close()
            return
        upstream = socket.create_connection((HOST, self.upstream_port))
        seen, tail = 0, b""
        try:
            while True:
                if not client.pending():
                    readable, _, _ = select.select([client, upstream], [], [])
                else:
                    readable = [client]
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    cut = None
                    if cut_into is not None:
                        window, start = tail + data, 0
                        while (found := window.find(BODY_LITERAL, start)) >= 0:
                            seen += 1
                            start = found + len(BODY_LITERAL)
                            if seen == cut_into:  # past "{size}\r\n" and 40 bytes into the message itself
                                end = window.find(b"\r\n", start)
                                at = end + 2 + 40 if end >= 0 else len(window)
                                cut = min(len(data), max(0, at - len(tail)))
                                break
                        tail = window[-(len(BODY_LITERAL) - 1) :]
                    client.sendall(data if cut is None else data[:cut])
                    if cut is not None:
                        self.cuts += 1
                        for side in (client, upstream):
                            side.shutdown(socket.SHUT_RDWR)  # on the TCP socket: no TLS close_notify
                        return
        except OSError:
            return
        finally:
            client.close()
            upstream.close()


@dataclass
class ProxiedServers(MailServers):
    """The test servers, with the accounts' IMAPS (``imap: ssl``) going through a proxy; the test's own
    look into a mailbox (`Mailbox`, on the plain port) still goes straight to Dovecot."""

    imaps_port: int = 0

    def ports(self, imap: str, smtp: str) -> tuple[int, int]:
        imap_port, smtp_port = super().ports(imap, smtp)
        return (self.imaps_port if imap == "ssl" else imap_port), smtp_port


@pytest.fixture
def proxy(mail_servers: MailServers) -> Iterator[CuttingProxy]:
    assert mail_servers.identity_provider is not None  # its certificate is the servers' one
    key = mail_servers.identity_provider.key_file
    cutter = CuttingProxy(mail_servers.dovecot.plain_port, mail_servers.cert, key)
    cutter.start()
    yield cutter
    cutter.stop()


def without_recent(flags: dict[str, tuple]) -> dict[str, set]:
    """The flags a user set (\\Recent belongs to whichever session looked first)."""
    return {message_id: set(found) - {b"\\Recent"} for message_id, found in flags.items()}


@pytest.mark.parametrize(
    ("messages", "cut_into", "first_run_stores", "deleting"),
    [
        (5, 3, 0, False),  # in the first (only) batch: nothing of it may be stored
        # Deleting selects the folder read-write (not EXAMINE): only then could a careless fetch set \Seen.
        (5, 3, 0, True),
        (205, 203, 200, True),  # in the second batch: the first is stored whole, the second not at all
    ],
)
def test_a_connection_cut_in_the_middle_of_a_fetch_imports_each_mail_once_on_the_next_run(
    engine_env, mail_servers, new_account, proxy, messages, cut_into, first_run_stores, deleting
) -> None:
    support = new_account()
    servers = ProxiedServers(
        mail_servers.users, mail_servers.dovecot, mail_servers.smtp, mail_servers.cert, imaps_port=proxy.port
    )
    applied(engine_env, servers, [support], {support.address: ticket(delete_after_import=deleting)})
    box = Mailbox(mail_servers, support)
    sent = {f"<cut-{n}@example.org>": mail(f"Mail {n}", f"<cut-{n}@example.org>") for n in range(messages)}
    raws = list(sent.values())
    third = len(raws) // 3
    # Read, flagged and unread mail: the import must leave every flag as the people left it.
    box.append(*raws[:third], flags=(b"\\Seen",))
    box.append(*raws[third : 2 * third], flags=(b"\\Flagged",))
    box.append(*raws[2 * third :])
    flags_before = without_recent(box.messages())
    assert set(flags_before) == set(sent)

    proxy.cut_into = cut_into
    cut = run("run", "--once")
    assert proxy.cuts == 1  # the worker's connection was cut, in the middle of a message's body
    assert cut.exit_code == 1, cut.output
    assert f"{support.address}: failed (connection_lost): " in cut.stderr and "1 of 1 account(s) failed." in cut.stderr
    assert f"{support.address}: imported" not in cut.stdout

    # Nothing half-imported: each index row has its file, each ticket its message, and a batch is all or nothing.
    index = rows(engine_env, "messages")
    for row in index:
        assert stored(engine_env, row) == sent[row["message_id"]]
    tickets = rows(engine_env, "tickets")
    assert {t["id"] for t in tickets} == {row["ticket_id"] for row in index}
    assert len(index) == first_run_stores == len(tickets)
    assert {row["message_id"] for row in index} == set(list(sent)[:first_run_stores])
    # Whatever left the server is stored; what is still there has the flags it had.
    on_server = without_recent(box.messages())
    assert set(sent) - set(on_server) <= {row["message_id"] for row in index}
    assert on_server == {message_id: flags_before[message_id] for message_id in on_server}

    proxy.cut_into = None  # the connection works again
    again = run("run", "--once")
    assert again.exit_code == 0, again.output
    deleted = f"; deleted {len(on_server)} on the server" if deleting else ""
    assert again.stdout == f"{support.address}: imported {messages - first_run_stores}, skipped 0{deleted}\n"
    index = rows(engine_env, "messages")
    # What the mailbox held, every mail and none twice, each byte for byte with its ticket.
    assert sorted(row["message_id"] for row in index) == sorted(flags_before)
    for row in index:
        assert stored(engine_env, row) == sent[row["message_id"]]
    assert {t["id"] for t in rows(engine_env, "tickets")} == {row["ticket_id"] for row in index}
    assert len(rows(engine_env, "tickets")) == messages
    if deleting:
        assert box.messages() == {} and {row["server_state"] for row in index} == {"deleted"}
    else:
        assert without_recent(box.messages()) == flags_before  # \Seen and \Flagged as they were
    assert run("run", "--once").stdout == f"{support.address}: imported 0, skipped 0\n"


# -- delete_after_import on a server without UIDPLUS ----------------------------------------------------

# Dovecot's own list without UIDPLUS (and without the extensions that imply it).
NO_UIDPLUS = "protocol imap {\n  imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+\n}"


@pytest.fixture(scope="module")
def without_uidplus(mail_servers: MailServers) -> Iterator[MailServers]:
    """A second Dovecot that does not offer UIDPLUS, beside the session's SMTP server (for apply's test
    mail); an account needs its mailbox added here too (``users.add``)."""
    assert mail_servers.identity_provider is not None  # its certificate is the servers' one
    root = Path(tempfile.mkdtemp(prefix="mailops-no-uidplus-"))
    root.chmod(0o755)  # Dovecot's auth process runs as another user and must reach the files
    users = MailUsers(root)
    dovecot = Dovecot(root, users, mail_servers.cert, mail_servers.identity_provider.key_file, extra_config=NO_UIDPLUS)
    dovecot.start()
    yield MailServers(users, dovecot, mail_servers.smtp, mail_servers.cert)
    dovecot.stop()
    shutil.rmtree(root, ignore_errors=True)


def capabilities(servers: MailServers, account: ServerAccount) -> tuple:
    """What the server offers after login, over IMAPS as the worker connects."""
    context = ssl.create_default_context(cafile=str(servers.cert))
    client = IMAPClient(HOST, port=servers.dovecot.tls_port, ssl_context=context, timeout=10)
    try:
        client.login(account.address, account.password)
        return client.capabilities()
    finally:
        client.logout()


def test_delete_after_import_without_uidplus_deletes_only_imported_mail(
    engine_env, mail_servers, without_uidplus, new_account
) -> None:
    support = new_account()
    without_uidplus.users.add(support.address, support.password)
    assert b"UIDPLUS" in capabilities(mail_servers, support)  # the setting, not the server version, makes the test
    assert b"UIDPLUS" not in capabilities(without_uidplus, support)

    settings = ticket(import_since="2025-01-01", delete_after_import=True)
    applied(engine_env, without_uidplus, [support], {support.address: settings})
    box = Mailbox(without_uidplus, support)
    box.append(mail("Too old", "<old@example.org>"), when=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    # Another client flagged this one \Deleted and may still change its mind: a plain EXPUNGE would take it.
    theirs = mail("Theirs", "<theirs@example.org>")
    box.append(theirs, when=dt.datetime(2024, 1, 2, tzinfo=dt.UTC), flags=(b"\\Deleted",))
    new = {f"<new-{n}@example.org>": mail(f"New {n}", f"<new-{n}@example.org>") for n in range(3)}
    box.append(*new.values())

    held = run("run", "--once")
    assert held.exit_code == 0, held.output
    assert held.stdout == (
        f"{support.address}: imported 3, skipped 2 (2 before import_since); 3 flagged \\Deleted, not expunged yet "
        "(no UIDPLUS, and other mail flagged \\Deleted that a plain EXPUNGE would remove too)\n"
    )
    left = box.messages()
    assert set(left) == {"<old@example.org>", "<theirs@example.org>", *new}  # nothing expunged
    assert all(b"\\Deleted" in left[message_id] for message_id in [*new, "<theirs@example.org>"])
    assert b"\\Deleted" not in left["<old@example.org>"]
    assert sorted(t["subject"] for t in rows(engine_env, "tickets")) == ["New 0", "New 1", "New 2"]

    # The other client unflags its mail; more mail arrives. Now a plain EXPUNGE takes exactly what is stored.
    client = box.client()
    client.select_folder("INBOX")
    client.remove_flags(client.search(["HEADER", "Message-ID", "<theirs@example.org>"]), [b"\\Deleted"])
    client.logout()
    new["<new-3@example.org>"] = mail("New 3", "<new-3@example.org>")
    box.append(new["<new-3@example.org>"])

    deleted = run("run", "--once")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout == f"{support.address}: imported 1, skipped 0; deleted 4 on the server\n"
    left = box.messages()
    assert set(left) == {"<old@example.org>", "<theirs@example.org>"}
    assert all(b"\\Deleted" not in flags for flags in left.values())
    index = rows(engine_env, "messages")
    assert sorted(row["message_id"] for row in index) == sorted(new)
    for row in index:  # what left the server is stored, each with its ticket
        assert row["server_state"] == "deleted" and stored(engine_env, row) == new[row["message_id"]]
    assert {t["id"] for t in rows(engine_env, "tickets")} == {row["ticket_id"] for row in index}
    assert len(rows(engine_env, "tickets")) == 4
    assert run("run", "--once").stdout == f"{support.address}: imported 0, skipped 0\n"


# -- a deleted account ------------------------------------------------------------------------------------


def test_a_deleted_account_is_no_longer_imported_archived_or_answered_and_its_history_stays(
    engine_env, mail_servers, new_account
) -> None:
    keep, gone = new_account(), new_account()
    first, second = new_account("kunde"), new_account("anna")  # customers whose mailboxes receive replies
    settings = {
        keep.address: {"ticket": ticket()},
        gone.address: {
            "ticket": ticket(),
            "archive": "{enabled: true, retention_days: 0}",
            "autoreply": replies.EVERY_MAIL_REPLY,  # a reply to every mail: none is held back as a repeat
        },
    }
    replies.applied(engine_env, mail_servers, [keep, gone], settings, visible={gone.address: "[support-team]"})
    gone_box = Mailbox(mail_servers, gone)
    gone_box.append(replies.inbound(first.address, "Before", "<before@example.org>"))
    before = run("run", "--once")
    assert before.exit_code == 0, before.output
    assert replies.line_of(before, gone.address) == (
        f"{gone.address}: imported 1, skipped 0; archived 1; auto-replies: 1 sent"
    )
    assert len(received(mail_servers, first.address)) == 1
    outbox_before = outbox_rows(engine_env)

    replies.write_spec(engine_env, mail_servers, [keep], {keep.address: {"ticket": ticket()}})
    deleted = run("apply", "--auto-approve", "--confirm-delete", gone.address, "--force")  # 1 of 2 accounts
    assert deleted.exit_code == 0, deleted.output
    assert [row["address"] for row in json.loads(run("accounts", "--json").stdout)] == [keep.address]

    gone_box.append(replies.inbound(second.address, "After", "<after@example.org>"))
    Mailbox(mail_servers, keep).append(replies.inbound(second.address, "Still here", "<kept@example.org>"))
    after = run("run", "--once")
    assert after.exit_code == 0, after.output
    assert after.stdout == f"{keep.address}: imported 1, skipped 0\n"  # not a word about the deleted one
    assert [row["message_id"] for row in rows(engine_env, "messages") if row["account"] == gone.address] == [
        "<before@example.org>"
    ]
    assert received(mail_servers, second.address) == [] and outbox_rows(engine_env) == outbox_before
    assert set(gone_box.messages()) == {"<before@example.org>", "<after@example.org>"}  # left as it was
    named = run("run", "--once", "--account", gone.address)
    assert named.exit_code == 1 and "is not an account declared in the spec" in named.stderr

    # What was stored stays readable, to those who could read it.
    [gone_ticket] = [
        t for t in json.loads(run("--as", "alice", "tickets", "list", "--json").stdout) if t["account"] == gone.address
    ]
    assert gone_ticket["subject"] == "Before"
    shown = json.loads(run("--as", "alice", "tickets", "show", str(gone_ticket["id"]), "--json").stdout)
    [message] = shown["messages"]
    assert Path(message["raw_file"]).read_bytes() == replies.inbound(first.address, "Before", "<before@example.org>")
    archived = json.loads(run("--as", "alice", "archive", "list", "--json").stdout)
    assert [entry["subject"] for entry in archived] == ["Before"]
    entry = run("--as", "alice", "archive", "show", str(archived[0]["id"]))
    assert entry.exit_code == 0 and "Text of Before." in entry.stdout
    assert json.loads(run("--as", "bob", "archive", "list", "--json").stdout) == []
    assert [t["account"] for t in json.loads(run("--as", "bob", "tickets", "list", "--json").stdout)] == [keep.address]
