"""XOAUTH2 against the real test servers (Dovecot, aiosmtpd) with tokens of the local identity provider.

Real logins over TLS, no mocks: imapclient for IMAP, aiosmtplib for SMTP. Every network call is
bounded (socket timeouts, and `asyncio.wait_for` around each SMTP session).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import TYPE_CHECKING

import aiosmtplib
import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from mailops.localservers.idp import LocalIdentityProvider
from tests.servers import HOST

if TYPE_CHECKING:
    from tests.conftest import MailServers

IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"
SMTP_SCOPE = "https://outlook.office.com/SMTP.Send"
GMAIL_SCOPE = "https://mail.google.com/"
OUTLOOK_SCOPES = [IMAP_SCOPE, SMTP_SCOPE]  # what a mail client asks Entra for (two tokens in reality)
TIMEOUT = 5  # seconds, per network operation


@pytest.fixture
def ctx(mail_servers: MailServers) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(mail_servers.cert))


@pytest.fixture
def idp(mail_servers: MailServers) -> LocalIdentityProvider:
    assert mail_servers.identity_provider is not None
    return mail_servers.identity_provider


# --- IMAP ------------------------------------------------------------------------------------


def imap_client(servers: MailServers, ctx: ssl.SSLContext, *, starttls: bool = False) -> IMAPClient:
    if starttls:
        client = IMAPClient(HOST, port=servers.dovecot.plain_port, ssl=False, timeout=TIMEOUT)
        client.starttls(ctx)
        return client
    return IMAPClient(HOST, port=servers.dovecot.tls_port, ssl=True, ssl_context=ctx, timeout=TIMEOUT)


def imap_oauth_inbox(servers: MailServers, ctx: ssl.SSLContext, user: str, token: str, **kwargs: bool) -> list[int]:
    """Log in with XOAUTH2, select INBOX and return its message ids."""
    client = imap_client(servers, ctx, **kwargs)
    try:
        client.oauth2_login(user, token)
        client.select_folder("INBOX", readonly=True)
        return list(client.search("ALL"))
    finally:
        client.shutdown()


@pytest.mark.parametrize("starttls", [False, True], ids=["imaps", "starttls"])
def test_imap_xoauth2_with_a_valid_token_selects_the_inbox(mail_servers, new_oauth_account, idp, ctx, starttls):
    address = new_oauth_account()
    mail_servers.users.deliver(address, b"Subject: hello\r\n\r\nbody\r\n")
    token = idp.issue_access_token(address, OUTLOOK_SCOPES)
    assert len(imap_oauth_inbox(mail_servers, ctx, address, token, starttls=starttls)) == 1


def test_imap_takes_google_tokens_oauthbearer_and_any_case_of_the_user(mail_servers, new_oauth_account, idp, ctx):
    address = new_oauth_account()
    token = idp.issue_access_token(address, [GMAIL_SCOPE, "openid", "email"])
    assert imap_oauth_inbox(mail_servers, ctx, address.upper(), token) == []
    client = imap_client(mail_servers, ctx)
    try:
        client.oauthbearer_login(address, token)
        client.select_folder("INBOX")
    finally:
        client.shutdown()


def _expired(idp: LocalIdentityProvider, address: str, other: str) -> str:
    token = idp.issue_access_token(address, OUTLOOK_SCOPES)
    idp.expire_access_tokens(address)
    return token


def _revoked(idp: LocalIdentityProvider, address: str, other: str) -> str:
    token = idp.issue_access_token(address, OUTLOOK_SCOPES)
    idp.revoke(address)
    return token


def _other_users(idp: LocalIdentityProvider, address: str, other: str) -> str:
    return idp.issue_access_token(other, OUTLOOK_SCOPES)


def _unknown(idp: LocalIdentityProvider, address: str, other: str) -> str:
    return "not-a-token-the-provider-issued"


def _imap_scope_only(idp: LocalIdentityProvider, address: str, other: str) -> str:
    return idp.issue_access_token(address, [IMAP_SCOPE])


BAD_TOKENS = {"expired": _expired, "revoked": _revoked, "other-user": _other_users, "unknown": _unknown}


# No scope case here: Dovecot checks no scope for a user's own mailbox (see tests/servers.py).
@pytest.mark.parametrize("make_token", BAD_TOKENS.values(), ids=BAD_TOKENS)
def test_imap_xoauth2_refuses_a_bad_token(mail_servers, new_oauth_account, idp, ctx, make_token):
    address, other = new_oauth_account(), new_oauth_account()
    token = make_token(idp, address, other)
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        imap_oauth_inbox(mail_servers, ctx, address, token)


def test_imap_passwords_still_work_and_an_oauth_mailbox_has_none(mail_servers, new_account, new_oauth_account, ctx):
    account = new_account()
    client = imap_client(mail_servers, ctx)
    try:
        client.login(account.address, account.password)
        client.select_folder("INBOX")
    finally:
        client.shutdown()
    client = imap_client(mail_servers, ctx)
    try:
        with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
            client.login(new_oauth_account(), "")
    finally:
        client.shutdown()


# --- SMTP ------------------------------------------------------------------------------------


def run(session: Callable[[], Awaitable[object]]) -> object:
    return asyncio.run(asyncio.wait_for(session(), 4 * TIMEOUT))


def smtp_client(servers: MailServers, ctx: ssl.SSLContext, port: str = "starttls") -> aiosmtplib.SMTP:
    if port == "ssl":
        return aiosmtplib.SMTP(
            hostname=HOST, port=servers.smtp.tls_port, use_tls=True, tls_context=ctx, timeout=TIMEOUT
        )
    return aiosmtplib.SMTP(
        hostname=HOST, port=servers.smtp.starttls_port, start_tls=True, tls_context=ctx, timeout=TIMEOUT
    )


def message(sender: str, recipient: str, subject: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, recipient, subject
    mail.set_content("sent with XOAUTH2\n")
    return mail


def smtp_xoauth2(servers: MailServers, ctx: ssl.SSLContext, user: str, token: str, port: str = "starttls") -> None:
    async def session() -> None:
        async with smtp_client(servers, ctx, port) as client:
            await client.auth_xoauth2(user, token)

    run(session)


@pytest.mark.parametrize("port", ["starttls", "ssl"])
def test_smtp_xoauth2_with_a_valid_token_sends(mail_servers, new_oauth_account, idp, ctx, port):
    address = new_oauth_account()
    token = idp.issue_access_token(address, OUTLOOK_SCOPES)

    async def session() -> None:
        async with smtp_client(mail_servers, ctx, port) as client:
            response = await client.auth_xoauth2(address, token)
            assert response.code == 235
            await client.send_message(message(address, address, "via auth_xoauth2"))

    run(session)
    assert [m["Subject"] for m in mail_servers.users.messages(address)] == ["via auth_xoauth2"]


def test_smtp_send_with_an_oauth_token_generator(mail_servers, new_oauth_account, idp, ctx):
    address = new_oauth_account()

    async def token() -> str:
        return idp.issue_access_token(address, [GMAIL_SCOPE])

    run(
        lambda: aiosmtplib.send(
            message(address, address, "via send()"),
            hostname=HOST,
            port=mail_servers.smtp.starttls_port,
            start_tls=True,
            tls_context=ctx,
            timeout=TIMEOUT,
            username=address.upper(),  # the user compares case-insensitively
            oauth_token_generator=token,
        )
    )
    assert [m["Subject"] for m in mail_servers.users.messages(address)] == ["via send()"]


def test_smtp_xoauth2_as_a_continuation_after_334(mail_servers, new_oauth_account, idp, ctx):
    address = new_oauth_account()
    token = idp.issue_access_token(address, [SMTP_SCOPE])
    encoded = base64.b64encode(f"user={address}\x01auth=Bearer {token}\x01\x01".encode())

    async def session() -> tuple[int, int]:
        async with smtp_client(mail_servers, ctx) as client:
            await client.ehlo()
            challenge = await client.execute_command(b"AUTH", b"XOAUTH2")
            answer = await client.execute_command(encoded)
            return challenge.code, answer.code

    assert run(session) == (334, 235)


@pytest.mark.parametrize("challenge", [True, False], ids=["334-json-first", "535-at-once"])
@pytest.mark.parametrize("make_token", [*BAD_TOKENS.values(), _imap_scope_only], ids=[*BAD_TOKENS, "imap-scope-only"])
def test_smtp_xoauth2_refuses_a_bad_token_with_5_7_3(
    mail_servers, new_oauth_account, idp, ctx, make_token, challenge, monkeypatch
):
    monkeypatch.setattr(mail_servers.smtp, "xoauth2_error_challenge", challenge)
    address, other = new_oauth_account(), new_oauth_account()
    token = make_token(idp, address, other)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failure:
        smtp_xoauth2(mail_servers, ctx, address, token)  # bounded by the client's timeout: a hang fails
    assert (failure.value.code, failure.value.message) == (535, "5.7.3 Authentication unsuccessful")


def test_smtp_xoauth2_failure_sends_a_json_challenge_then_535(mail_servers, new_oauth_account, idp, ctx):
    address = new_oauth_account()
    encoded = base64.b64encode(f"user={address}\x01auth=Bearer expired-or-bogus\x01\x01".encode())

    async def session() -> tuple[object, ...]:
        async with smtp_client(mail_servers, ctx) as client:
            await client.ehlo()
            challenge = await client.execute_command(b"AUTH", b"XOAUTH2", encoded)
            final = await client.execute_command(b"")
            after = await client.noop()  # the session goes on
            error = json.loads(base64.b64decode(challenge.message))
            return challenge.code, error, final.code, final.message, after.code

    code, error, final_code, final_message, after = run(session)
    assert (code, error["status"], final_code, final_message, after) == (
        334,
        "401",
        535,
        "5.7.3 Authentication unsuccessful",
        250,
    )
    assert SMTP_SCOPE in error["scope"].split()


def test_smtp_auth_switched_off_for_a_mailbox_answers_5_7_139(mail_servers, new_oauth_account, new_account, idp, ctx):
    address, account = new_oauth_account(), new_account()
    for disabled in (address, account.address):
        mail_servers.users.disable_smtp_auth(disabled)
    token = idp.issue_access_token(address, OUTLOOK_SCOPES)
    expected = (535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.")
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failure:
        smtp_xoauth2(mail_servers, ctx, address, token)
    assert (failure.value.code, failure.value.message) == expected

    async def password_login() -> None:
        async with smtp_client(mail_servers, ctx) as client:
            await client.login(account.address, account.password)

    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failure:
        run(password_login)
    assert (failure.value.code, failure.value.message) == expected
    mail_servers.users.enable_smtp_auth(address)
    smtp_xoauth2(mail_servers, ctx, address, token)


def test_smtp_passwords_still_work(mail_servers, new_account, ctx):
    account = new_account()

    async def session() -> None:
        async with smtp_client(mail_servers, ctx) as client:
            await client.login(account.address, account.password)
            await client.send_message(message(account.address, account.address, "with a password"))
        async with smtp_client(mail_servers, ctx) as client:
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failure:
                await client.login(account.address, "wrong")
            assert failure.value.code == 535

    run(session)
    assert [m["Subject"] for m in mail_servers.users.messages(account.address)] == ["with a password"]


# --- shared mailboxes (Microsoft's way: user=<shared>, the delegate's token) ------------------


def test_a_delegate_reaches_a_shared_mailbox_over_imap_and_smtp(mail_servers, new_oauth_account, idp, ctx):
    delegate, outsider = new_oauth_account("delegate"), new_oauth_account("outsider")
    shared = delegate.replace("delegate", "team", 1)  # a fresh address: a shared mailbox has no sign-in
    mail_servers.users.grant_access(shared, delegate)
    mail_servers.users.deliver(shared, b"Subject: for the team\r\n\r\nbody\r\n")
    token = idp.issue_access_token(delegate, OUTLOOK_SCOPES)
    assert len(imap_oauth_inbox(mail_servers, ctx, shared, token)) == 1
    assert imap_oauth_inbox(mail_servers, ctx, delegate, token) == []  # its own mailbox, still
    smtp_xoauth2(mail_servers, ctx, shared, token)

    outsider_token = idp.issue_access_token(outsider, OUTLOOK_SCOPES)
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        imap_oauth_inbox(mail_servers, ctx, shared, outsider_token)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError, match="5.7.3"):
        smtp_xoauth2(mail_servers, ctx, shared, outsider_token)
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        imap_oauth_inbox(mail_servers, ctx, delegate, outsider_token)  # the grant is not the other way round

    smtp_only = idp.issue_access_token(delegate, [SMTP_SCOPE])
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        imap_oauth_inbox(mail_servers, ctx, shared, smtp_only)

    mail_servers.users.revoke_access(shared, delegate)
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        imap_oauth_inbox(mail_servers, ctx, shared, token)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError, match="5.7.3"):
        smtp_xoauth2(mail_servers, ctx, shared, token)


def test_an_expired_delegate_token_does_not_open_the_shared_mailbox(mail_servers, new_oauth_account, idp, ctx):
    delegate = new_oauth_account("delegate")
    shared = delegate.replace("delegate", "shared", 1)
    mail_servers.users.grant_access(shared, delegate)
    token = idp.issue_access_token(delegate, OUTLOOK_SCOPES)
    idp.expire_access_tokens(delegate)
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        imap_oauth_inbox(mail_servers, ctx, shared, token)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError, match="5.7.3"):
        smtp_xoauth2(mail_servers, ctx, shared, token)
