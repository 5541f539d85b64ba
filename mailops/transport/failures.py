"""Why a connection, login or send failed, and what to do about it.

Every exception from the network layer is turned into a :class:`TransportError` with
a :class:`FailureClass`. The remedies are written for the person who has to fix it.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from enum import StrEnum

from mailops.errors import MailopsError, printable


class FailureClass(StrEnum):
    CONNECT = "connect"
    TLS = "tls"
    AUTH = "auth"
    SENDER_REFUSED = "sender_refused"
    RECIPIENT_REFUSED = "recipient_refused"
    DATA_REFUSED = "data_refused"
    TIMEOUT = "timeout"
    SECRET = "secret"
    PROTOCOL = "protocol"
    CONNECTION_LOST = "connection_lost"
    NOT_DELIVERED = "not_delivered"
    LOCAL = "local"
    TOKEN = "token"  # the OAuth token is gone or refused: the account needs a person to reconnect it
    SMTP_AUTH_DISABLED = "smtp_auth_disabled"


# How the identity providers are reached (mailops.transport.http), for the remedies of their failures.
PROXY_HINT = "directly, or through the proxy that HTTPS_PROXY names; NO_PROXY lists the hosts it does not take"

REMEDIES: dict[FailureClass, str] = {
    FailureClass.CONNECT: (
        "The server could not be reached. Check the host name and port in the spec, that the host "
        "resolves, and that no firewall blocks the port."
    ),
    FailureClass.TLS: (
        "The encrypted connection failed. Check that `encryption` matches the port (ssl: 993/465, "
        "starttls: 143/587) and that the server's certificate is valid; for a self-hosted server, "
        "trust its CA with MAILOPS_CA_FILE."
    ),
    FailureClass.AUTH: (
        "The server refused the login. Check the username and the password the secret reference "
        "points to; some providers need an app password or IMAP/SMTP access enabled first. Shared "
        "mailboxes have no password of their own and cannot be connected."
    ),
    FailureClass.SENDER_REFUSED: (
        "The server does not accept this address as sender. Check that the address is hosted by "
        "this provider and that the login may send as it."
    ),
    FailureClass.RECIPIENT_REFUSED: (
        "The recipient's address is unknown or refused. Check its spelling; rarely a provider limit is the cause."
    ),
    FailureClass.DATA_REFUSED: (
        "The server refused the message itself (content, size or sending limits). Check the "
        "server's text below and the provider's sending limits."
    ),
    FailureClass.TIMEOUT: (
        "The server did not answer in time. Check the host and port, then retry; raise "
        "MAILOPS_CONNECT_TIMEOUT or MAILOPS_COMMAND_TIMEOUT for slow servers."
    ),
    FailureClass.SECRET: (
        "The password could not be read. Set the environment variable or create the file that "
        "the account's `password:` reference names."
    ),
    FailureClass.PROTOCOL: (
        "The server answered in an unexpected way. Check that host and port belong to the right "
        "protocol (IMAP or SMTP) and see the server's text below."
    ),
    FailureClass.CONNECTION_LOST: (
        "The server closed the connection in the middle of the exchange: a restart, a network drop, "
        "or an idle or connection limit. Nothing stored is lost; the next try starts over (a mail being "
        "sent at that moment may have arrived). If it keeps happening with one server, check its log "
        "and its connection limits."
    ),
    FailureClass.NOT_DELIVERED: (
        "The server accepted the mail, but it did not arrive in the mailbox in time. Look for it in "
        "the spam folder and in the server's log; a server that discards mail, or a slow delivery queue, "
        "looks like this. Raise MAILOPS_DELIVERY_WAIT for slow servers."
    ),
    FailureClass.TOKEN: (
        "The OAuth grant no longer works (revoked, expired after a long time unused, or the password "
        "changed). Run `mailops reconnect ADDRESS` and sign in again as the mailbox's owner."
    ),
    FailureClass.SMTP_AUTH_DISABLED: (
        "Microsoft 365 has SMTP AUTH turned off for this mailbox or the whole tenant. An Exchange "
        "administrator enables it with `Set-CASMailbox -Identity ADDRESS -SmtpClientAuthenticationDisabled "
        "$false` (or for the tenant in the admin center); it takes up to an hour to apply."
    ),
    FailureClass.LOCAL: (
        "mailops could not build or send the request on this side; no server refused anything. "
        "Check the value the text below names (an address, a name or a login with characters a mail "
        "protocol cannot carry)."
    ),
}

OAUTH_LOGIN_REFUSED = (
    "The server refused the OAuth token. Check that IMAP and SMTP AUTH are enabled for the mailbox "
    "(Microsoft 365: admin center → the user → Mail → Email apps) and that the app has the IMAP and SMTP "
    "permissions; if the grant was revoked, run `mailops reconnect ADDRESS`."
)

NO_STARTTLS_REMEDY = (
    "The server does not offer STARTTLS on this port, so the login would go unencrypted; mailops "
    "refuses that. Use `encryption: ssl` with the provider's implicit-TLS port (IMAP 993, SMTP 465), "
    "or check that host and port are the provider's submission service."
)

_ENHANCED_CODE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class TransportError(MailopsError):
    """A classified failure; ``detail`` is the server's or the system's own text."""

    def __init__(
        self,
        failure_class: FailureClass,
        detail: str,
        *,
        protocol: str = "",
        smtp_code: int | None = None,
        enhanced_code: str | None = None,
        remedy: str | None = None,
    ):
        self.failure_class = failure_class
        self._remedy = remedy
        # The server's text is shown on terminals and stored: never with its control characters.
        self.detail = printable(detail.strip())
        self.protocol = protocol
        self.smtp_code = smtp_code
        self.enhanced_code = enhanced_code or _enhanced_code(detail)
        super().__init__(self.summary())

    @property
    def remedy(self) -> str:
        return self._remedy or REMEDIES[self.failure_class]

    def with_remedy(self, remedy: str) -> TransportError:
        """The same failure, with a remedy that knows more about the situation than the class does."""
        return TransportError(
            self.failure_class,
            self.detail,
            protocol=self.protocol,
            smtp_code=self.smtp_code,
            enhanced_code=self.enhanced_code,
            remedy=remedy,
        )

    def summary(self) -> str:
        where = f"{self.protocol.upper()} " if self.protocol else ""
        code = f" [{self.smtp_code}{' ' + self.enhanced_code if self.enhanced_code else ''}]" if self.smtp_code else ""
        return f"{where}{self.failure_class.value}{code}: {self.detail}"


def _enhanced_code(text: str) -> str | None:
    match = _ENHANCED_CODE.search(text)
    return match.group(1) if match else None


_NO_STARTTLS = re.compile(r"starttls.*not supported|not support.*starttls|no starttls", re.IGNORECASE)


def classify(exc: BaseException, protocol: str) -> TransportError:
    """Map any exception raised while talking to a server to a classified error."""
    if isinstance(exc, TransportError):
        return exc
    if _NO_STARTTLS.search(_text(exc)):
        return TransportError(FailureClass.TLS, _text(exc), protocol=protocol, remedy=NO_STARTTLS_REMEDY)
    if isinstance(exc, _LOCAL) and not isinstance(exc, OSError):  # ssl errors are ValueErrors too
        # Raised on this side while building a command or a message, or reading what came back: no server's doing.
        return TransportError(FailureClass.LOCAL, f"{type(exc).__name__}: {_text(exc)}", protocol=protocol)
    smtp = _classify_smtp(exc, protocol)
    if smtp is not None:
        return smtp
    imap = _classify_imap(exc, protocol)
    if imap is not None:
        return imap
    return _classify_os(exc, protocol)


# What Python raises for a value it cannot work with (a date beyond the calendar is an OverflowError).
_LOCAL = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError)
# The peer went away after the connection was made (an EOF inside TLS is one too).
_CONNECTION_LOST = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError)


def _classify_os(exc: BaseException, protocol: str) -> TransportError:
    # Walk the cause chain: libraries wrap the socket/SSL error that tells what happened.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _CONNECTION_LOST):
            return TransportError(FailureClass.CONNECTION_LOST, _text(seen) or type(seen).__name__, protocol=protocol)
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return TransportError(FailureClass.TLS, _text(seen), protocol=protocol)
        if isinstance(seen, socket.gaierror):
            return TransportError(FailureClass.CONNECT, f"host not found ({_text(seen)})", protocol=protocol)
        if isinstance(seen, TimeoutError):  # socket.timeout and asyncio.TimeoutError are aliases of it
            return TransportError(FailureClass.TIMEOUT, _text(seen), protocol=protocol)
        if isinstance(seen, ConnectionRefusedError) or getattr(seen, "errno", None) in (
            errno.ECONNREFUSED,
            errno.EHOSTUNREACH,
            errno.ENETUNREACH,
        ):
            return TransportError(FailureClass.CONNECT, f"connection refused ({_text(seen)})", protocol=protocol)
        seen = seen.__cause__ or seen.__context__
    return TransportError(FailureClass.PROTOCOL, _text(exc), protocol=protocol)


def _classify_imap(exc: BaseException, protocol: str) -> TransportError | None:
    import imaplib

    from imapclient.exceptions import LoginError

    if isinstance(exc, LoginError):
        return TransportError(FailureClass.AUTH, _text(exc), protocol=protocol)
    if isinstance(exc, imaplib.IMAP4.abort) and "unexpected response" not in str(exc):
        # imaplib's abort is a read or write that failed, or the server's BYE: the session is gone.
        # An unexpected response is the server speaking another protocol, which stays `protocol`.
        classified = _classify_os(exc, protocol)
        if classified.failure_class is FailureClass.PROTOCOL:
            return TransportError(FailureClass.CONNECTION_LOST, _text(exc), protocol=protocol)
        return classified
    return None


def _classify_smtp(exc: BaseException, protocol: str) -> TransportError | None:
    import aiosmtplib

    if not isinstance(exc, aiosmtplib.SMTPException):
        return None
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", "") or _text(exc)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return TransportError(FailureClass.TIMEOUT, message, protocol=protocol)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        failure = FailureClass.SMTP_AUTH_DISABLED if "5.7.139" in message else FailureClass.AUTH
        return TransportError(failure, message, protocol=protocol, smtp_code=code)
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return TransportError(FailureClass.SENDER_REFUSED, message, protocol=protocol, smtp_code=code)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0] if exc.recipients else None
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients) or message
        return TransportError(
            FailureClass.RECIPIENT_REFUSED, text, protocol=protocol, smtp_code=first.code if first else None
        )
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return TransportError(
            FailureClass.RECIPIENT_REFUSED, f"{exc.recipient}: {message}", protocol=protocol, smtp_code=code
        )
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return TransportError(FailureClass.DATA_REFUSED, message, protocol=protocol, smtp_code=code)
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
        inner = exc.__cause__ or exc.__context__
        if inner is not None:
            classified = _classify_os(inner, protocol)
            if classified.failure_class is not FailureClass.PROTOCOL:
                return classified
        return TransportError(
            FailureClass.CONNECT if isinstance(exc, aiosmtplib.SMTPConnectError) else FailureClass.CONNECTION_LOST,
            message,
            protocol=protocol,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return TransportError(FailureClass.PROTOCOL, message, protocol=protocol, smtp_code=code)
    return TransportError(FailureClass.PROTOCOL, message, protocol=protocol)


_BYTES_REPR = re.compile(r"""\bb(['"])(.*?)\1""")


def _text(exc: BaseException) -> str:
    # imaplib puts the server's raw bytes into the exception, and imapclient their repr
    # (b'[AUTHENTICATIONFAILED] ...'); show them as the server's text.
    parts = [arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg) for arg in exc.args]
    text = " ".join(parts) if parts else str(exc)
    return _BYTES_REPR.sub(lambda match: match.group(2), text).strip() or type(exc).__name__
