"""The mapping from low-level exceptions to failure classes, for errors a local server cannot produce."""

from __future__ import annotations

import datetime as dt
import socket
import ssl

import aiosmtplib

from mailops.transport.failures import REMEDIES, FailureClass, classify


def test_dns_failure_is_a_connect_failure() -> None:
    error = classify(socket.gaierror(-2, "Name or service not known"), "imap")
    assert error.failure_class is FailureClass.CONNECT
    assert error.summary() == "IMAP connect: host not found (-2 Name or service not known)"


def test_a_wrapped_ssl_error_is_found_through_the_cause_chain() -> None:
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
        except ssl.SSLError as inner:
            raise aiosmtplib.SMTPConnectError("Error connecting to 127.0.0.1 on port 465") from inner
    except aiosmtplib.SMTPConnectError as outer:
        error = classify(outer, "smtp")
    assert error.failure_class is FailureClass.TLS


def test_smtp_codes_and_enhanced_status_codes_are_kept() -> None:
    error = classify(aiosmtplib.SMTPSenderRefused(553, "5.1.8 Sender address rejected", "x@example.com"), "smtp")
    assert (error.failure_class, error.smtp_code, error.enhanced_code) == (FailureClass.SENDER_REFUSED, 553, "5.1.8")


def test_every_class_has_a_remedy() -> None:
    assert set(REMEDIES) == set(FailureClass)
    assert all(len(text) > 40 for text in REMEDIES.values())


def test_errors_raised_on_this_side_are_local_not_the_servers() -> None:
    from email.message import EmailMessage

    message = EmailMessage()
    try:
        message["Subject"] = "Hello\r\nBcc: victim@example.org"
    except ValueError as exc:
        header = classify(exc, "smtp")
    try:
        "Grüße".encode("ascii")
    except UnicodeEncodeError as exc:
        encoding = classify(exc, "imap")
    try:  # what a mail's content can make of our own reading: a date beyond the calendar
        dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-2))).astimezone(dt.UTC)
    except OverflowError as exc:
        overflow = classify(exc, "imap")
    for error in (header, encoding, overflow, classify(KeyError("uid"), "imap")):
        assert error.failure_class is FailureClass.LOCAL
        assert "no server refused anything" in error.remedy


def test_a_missing_starttls_is_a_tls_failure_with_its_own_remedy() -> None:
    from imapclient.exceptions import CapabilityError

    for exc, protocol in (
        (aiosmtplib.SMTPException("SMTP STARTTLS extension not supported by server."), "smtp"),
        (CapabilityError("Server does not support STARTTLS capability"), "imap"),
    ):
        error = classify(exc, protocol)
        assert error.failure_class is FailureClass.TLS
        assert error.remedy.startswith("The server does not offer STARTTLS on this port")


def test_server_bytes_are_shown_as_text() -> None:
    from imapclient.exceptions import LoginError

    error = classify(LoginError("b'[AUTHENTICATIONFAILED] Authentication failed.'"), "imap")
    assert error.summary() == "IMAP auth: [AUTHENTICATIONFAILED] Authentication failed."


def test_control_characters_in_a_servers_reply_are_shown_escaped() -> None:
    error = classify(aiosmtplib.SMTPAuthenticationError(535, "5.7.8 \x1b]0;pwned\x07FAKE: all good\rOVERWRITE"), "smtp")
    assert error.summary() == "SMTP auth [535 5.7.8]: 5.7.8 \\x1b]0;pwned\\x07FAKE: all good\\rOVERWRITE"


def test_a_connection_that_breaks_off_is_connection_lost_not_a_protocol_error() -> None:
    import imaplib

    lost = [
        (imaplib.IMAP4.abort("command: FETCH => socket error: EOF"), "imap"),
        (imaplib.IMAP4.abort("Disconnected for inactivity."), "imap"),  # the server's BYE
        (ConnectionResetError(104, "Connection reset by peer"), "imap"),
        (BrokenPipeError(32, "Broken pipe"), "smtp"),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "imap"),
        (aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"), "smtp"),
    ]
    for exc, protocol in lost:
        error = classify(exc, protocol)
        assert error.failure_class is FailureClass.CONNECTION_LOST, exc
        assert error.remedy.startswith("The server closed the connection in the middle of the exchange")
    # A server that answers in another protocol stays a protocol error.
    other = classify(imaplib.IMAP4.abort("unexpected response: b'220 smtp.example.com ESMTP'"), "imap")
    assert other.failure_class is FailureClass.PROTOCOL
