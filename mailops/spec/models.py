"""The desired state: what `config/accounts.yaml` and `config/defaults.yaml` may say.

Every field maps to a setting of the ERP's e-mail account screen (README: "What mailops
is"). The models check shapes and single values, strictly: a port is an integer, not
`true`, and no text that reaches a server command or a mail header may hold a control
character. Checks that need the whole spec (references, duplicates, policies) live in
:mod:`mailops.spec.checks`.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Annotated, Literal

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DOT_ATOM_TEXT,
    EMAIL_MAX_LENGTH,
    LOCAL_PART_MAX_LENGTH,
)
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from mailops.errors import quoted

Provider = Literal["microsoft", "google", "manual"]
Encryption = Literal["ssl", "starttls", "none"]

# The only placeholders the seed allows in signatures and greetings.
TEMPLATE_VARIABLES: tuple[str, ...] = (
    "MITARBEITER",
    "MITARBEITER_TELEFON",
    "MITARBEITER_MOBIL",
    "MITARBEITER_EMAIL",
    "MITARBEITER_TELEFAX",
)
# Where the HTML template puts the mail's content.
CONTENT_PLACEHOLDER = "{CONTENT}"
MAX_CC = 2

# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: any of
# them in a header or an IMAP/SMTP command ends the line early, and what follows becomes
# a header or a command of its own.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Multi-line texts (signature, greeting, bodies) may hold line feeds and tabs, nothing else.
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _refuse(character: str, hint: str) -> PydanticCustomError:
    from mailops.spec.yamldoc import describe_character

    return PydanticCustomError(
        "control_character",
        "control character {char} is not allowed{hint}",
        {"char": describe_character(character), "hint": hint},
    )


def control_in_line(value: str) -> re.Match[str] | None:
    """The first character that :func:`single_line` text may not hold, or None."""
    return _CONTROL.search(value)


def single_line(value: str) -> str:
    """Text for one line of a header or a server command: no control characters at all."""
    bad = control_in_line(value)
    if bad is not None:
        raise _refuse(bad.group(), "; this value must be a single line")
    return value


def control_in_text(value: str) -> re.Match[str] | None:
    """The first character that :func:`multi_line` text may not hold, or None."""
    return _CONTROL_IN_TEXT.search(value)


def multi_line(value: str) -> str:
    """Text that may span lines (``\\n``) and hold tabs, but no other control character."""
    bad = control_in_text(value)
    if bad is not None:
        hint = "; write a line break as \\n" if bad.group() == "\r" else ""
        raise _refuse(bad.group(), hint)
    return value


@lru_cache(maxsize=65536)  # a spec names each address several times (accounts, links, defaults)
def canonical_address(value: str) -> str:
    """An address in the form every protocol accepts: ASCII, the domain in IDNA (punycode) form.

    ``info@bücher.example`` and ``info@xn--bcher-kva.example`` are the same mailbox and
    come out the same. A non-ASCII local part (``jörg@``) needs SMTPUTF8 end to end,
    which not every server offers: it is refused with a message that says so.
    """
    fast = _canonical_dot_atom(value)
    if fast is not None:
        return fast
    try:
        return validate_email(value, check_deliverability=False, allow_smtputf8=False).ascii_email or value
    except EmailNotValidError as exc:
        reason = str(exc)
        if reason.startswith("Internationalized characters before the @-sign"):
            reason = (
                "non-ASCII characters before the @ need SMTPUTF8, which mailops does not use; "
                "use the mailbox's ASCII address or alias"
            )
        raise PydanticCustomError("email", "not a valid e-mail address: {reason}", {"reason": reason}) from None


def _canonical_dot_atom(value: str) -> str | None:
    """The canonical form of the usual address (an ASCII dot-atom before the @), else None.

    email-validator checks the domain of every address character by character (IDNA),
    about 0.1 ms each: too slow for ten thousand accounts. The domain is therefore
    validated by it once per domain, and the local part against its own constants; a
    property test holds this equal to validating the whole address.
    """
    local, at, domain = value.rpartition("@")
    if not at or len(local) > LOCAL_PART_MAX_LENGTH or not DOT_ATOM_TEXT.match(local):
        return None
    try:
        ascii_domain = _canonical_domain(domain)
    except EmailNotValidError:
        return None  # the full validation gives the message
    if local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES:
        local = local.lower()
    address = f"{local}@{ascii_domain}"
    return address if len(address) <= EMAIL_MAX_LENGTH else None


@lru_cache(maxsize=4096)
def _canonical_domain(domain: str) -> str:
    validated = validate_email("postmaster@" + domain, check_deliverability=False, allow_smtputf8=False)
    return validated.ascii_domain


def address_key(value: str) -> str | None:
    """How accounts are told apart: the canonical address, lower-cased; None when ``value`` is no address."""
    try:
        return canonical_address(single_line(value)).lower()
    except PydanticCustomError:
        return None


def _check_address(value: str) -> str:
    return canonical_address(single_line(value))


_WHITESPACE = re.compile(r"\s")  # for str patterns, exactly the characters str.isspace() accepts


def _host_name(value: str) -> str:
    single_line(value)
    if _WHITESPACE.search(value):
        raise PydanticCustomError("host", "a host name has no spaces")
    return value


_YYYY_MM_DD = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_date(value: object) -> object:
    """Dates are written as YYYY-MM-DD; the YAML loader leaves them as text for this to judge."""
    if isinstance(value, str):
        try:
            if not _YYYY_MM_DD.fullmatch(value):  # fromisoformat also takes 20260131 and 2026-W05-6
                raise ValueError(value)
            return dt.date.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError(
                "date", "not a valid date {value}; write it as YYYY-MM-DD, e.g. 2026-01-31", {"value": quoted(value)}
            ) from None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    raise PydanticCustomError("date", "expected a date written as YYYY-MM-DD")


EmailAddress = Annotated[str, AfterValidator(_check_address)]
Line = Annotated[str, AfterValidator(single_line)]
NonEmptyStr = Annotated[str, Field(min_length=1), AfterValidator(single_line)]
Text = Annotated[str, AfterValidator(multi_line)]
HostName = Annotated[str, Field(min_length=1), AfterValidator(_host_name)]
Port = Annotated[int, Field(ge=1, le=65535)]
IsoDate = Annotated[dt.date, BeforeValidator(_iso_date)]


def _check_cc(value: list[str]) -> list[str]:
    if len(value) > MAX_CC:
        raise PydanticCustomError(
            "too_many_cc",
            "at most {limit} copy recipients are allowed (Kopie-Empfänger 1 and 2), got {count}",
            {"limit": MAX_CC, "count": len(value)},
        )
    return value


class SpecModel(BaseModel):
    # Unknown keys are typos (`retention_day`): refuse them instead of ignoring them.
    # Strict: YAML already gives numbers and booleans their types, so `port: true` or
    # `enabled: "yes"` is a mistake to report, not a value to convert.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _variable_name(value: str) -> str:
    # A name like `hunter2!` is more likely the secret itself than the name of a variable.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise PydanticCustomError(
            "variable_name",
            "not an environment variable name (letters, digits and _, not starting with a digit); "
            "the spec names where a secret is, never the secret itself",
        )
    return value


class SecretRef(SpecModel):
    """Where a secret comes from. The spec never holds the secret itself."""

    env: Annotated[str, AfterValidator(_variable_name)] | None = Field(
        None, description="Name of the environment variable holding the secret."
    )
    file: NonEmptyStr | None = Field(
        None, description="Path of a file holding the secret (relative to the config dir)."
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_literal(cls, value: object) -> object:
        if isinstance(value, (str, int, float)):
            raise PydanticCustomError(
                "literal_secret",
                "a literal password is not allowed in the spec; reference it as {env: VARIABLE} or {file: PATH}",
            )
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise PydanticCustomError("secret_source", "give exactly one of `env` or `file`")
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"


class ServerSettings(SpecModel):
    """One connection endpoint (IMAP-Server/-Port/-Verschlüsselung, or the SMTP ones)."""

    host: HostName
    port: Port
    encryption: Encryption


class TicketSettings(SpecModel):
    """ "Für Ticket-Modul aktivieren" and its options."""

    enabled: bool = False
    default_project: NonEmptyStr | None = None
    default_queue: NonEmptyStr | None = None
    import_since: IsoDate | None = Field(None, description="Only mail received on or after this date is imported.")
    delete_after_import: bool = Field(False, description="Delete on the server once the ticket is stored.")
    auto_close: bool = Field(False, description="Imported tickets are closed right away.")


class ArchiveSettings(SpecModel):
    """ "Webmail": keep this account's mail in the e-mail archive."""

    enabled: bool = False
    retention_days: Annotated[int, Field(ge=0, description="Days to keep archived mail; 0 keeps it forever.")] = 0


class AutoreplySettings(SpecModel):
    """ "Automatische Antwort" on new inbound mail."""

    enabled: bool = False
    once_per_day_per_sender: bool = True
    subject: Line = ""
    body: Text = Field("", description="HTML body of the reply.")


class Account(SpecModel):
    address: EmailAddress
    provider: Provider
    display_name: NonEmptyStr | None = Field(
        None, description="Shown name; OAuth accounts default to the address's local part, manual ones need it."
    )
    username: NonEmptyStr | None = Field(None, description="Login name; manual accounts need it.")
    password: SecretRef | None = Field(None, description="Manual accounts only: where the password comes from.")
    imap: ServerSettings | None = None
    smtp: ServerSettings | None = None
    visible_to: list[NonEmptyStr] = Field(
        default_factory=list, description="Employees or groups; empty = everyone with ticket/archive access."
    )
    ticket: TicketSettings = TicketSettings()
    archive: ArchiveSettings = ArchiveSettings()
    autoreply: AutoreplySettings = AutoreplySettings()
    signature: Text = ""
    aliases: list[EmailAddress] = Field(
        default_factory=list,
        description="OAuth: other addresses the consenting identity may carry (Outlook.com or domain aliases).",
    )
    delegate: EmailAddress | None = Field(
        None,
        description="Microsoft shared mailbox: the user who consents; the login is the shared address itself.",
    )


class ProjectLink(SpecModel):
    """A project or sales channel that sends from its own account instead of the default."""

    email: EmailAddress
    sender_name: NonEmptyStr | None = None


class SendingDefaults(SpecModel):
    """ "Standard Einstellung E-Mail (bei Versand von E-Mails)"."""

    email: EmailAddress
    sender_name: NonEmptyStr
    signature: Text = ""
    greeting: Text = ""
    cc: Annotated[list[EmailAddress], AfterValidator(_check_cc)] = Field(default_factory=list)
    bcc: EmailAddress | None = None
    html_template: NonEmptyStr | None = Field(
        None, description=f"HTML file (relative to the config dir) that wraps every mail; holds {CONTENT_PLACEHOLDER}."
    )


def _https_url(value: str) -> str:
    from urllib.parse import urlsplit

    single_line(value)
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise PydanticCustomError(
            "https_url", "expected an https:// URL without query, e.g. https://login.microsoftonline.com"
        )
    return value.rstrip("/")


HttpsUrl = Annotated[str, AfterValidator(_https_url)]


class MicrosoftApp(SpecModel):
    """The app registered in Microsoft Entra ID that mailboxes consent to (a public client)."""

    client_id: NonEmptyStr = Field(description="Application (client) ID of the app registration.")
    tenant: NonEmptyStr = Field(
        "organizations", description="Tenant ID or domain; `organizations` for any work or school account."
    )
    authority: HttpsUrl = Field(
        "https://login.microsoftonline.com",
        description="Identity platform host; sovereign clouds use their own (e.g. https://login.microsoftonline.us).",
    )


class GoogleApp(SpecModel):
    """The Google Cloud OAuth client ("Desktop app") that mailboxes consent to."""

    client_secrets: SecretRef = Field(
        description="The client's JSON as Google's console downloads it (names auth_uri and token_uri)."
    )


class OAuthApps(SpecModel):
    """The OAuth apps; needed once an account of that provider is declared."""

    microsoft: MicrosoftApp | None = None
    google: GoogleApp | None = None


class Employee(SpecModel):
    name: NonEmptyStr
    email: EmailAddress | None = None
    phone: Line = ""
    mobile: Line = ""
    fax: Line = ""
    groups: list[NonEmptyStr] = Field(default_factory=list)


def _check_test_mail_recipient(value: str) -> str:
    return value if value == "self" else _check_address(value)


class TestMailPolicy(SpecModel):
    __test__ = False  # not a pytest class

    on_apply: bool = True
    to: Annotated[str, AfterValidator(_check_test_mail_recipient)] = Field(
        "self", description="`self` (the account itself) or an address."
    )


class OutboxPolicy(SpecModel):
    keep_bodies_days: Annotated[
        int, Field(ge=0, description="Days the outbox keeps a sent mail whole, for `outbox resend`; 0 keeps none.")
    ] = 0


class Policies(SpecModel):
    require_encryption: bool = True
    allow_delete: bool = False
    max_delete_fraction: Annotated[float, Field(ge=0, le=1)] = 0.34
    test_mail: TestMailPolicy = TestMailPolicy()
    outbox: OutboxPolicy = OutboxPolicy()
    cli_user_is_admin: bool = Field(
        False,
        description="Without --as / MAILOPS_USER the command line acts as an administrator (sees every account); "
        "otherwise it must be told who acts.",
    )


class AccountsFile(SpecModel):
    """`config/accounts.yaml`."""

    accounts: list[Account] = Field(default_factory=list)
    projects: dict[NonEmptyStr, ProjectLink] = Field(default_factory=dict)


class DefaultsFile(SpecModel):
    """`config/defaults.yaml`."""

    defaults: SendingDefaults
    employees: dict[NonEmptyStr, Employee] = Field(default_factory=dict)
    queues: list[NonEmptyStr] = Field(default_factory=list)
    oauth: OAuthApps = OAuthApps()
    policies: Policies = Policies()


class Spec(SpecModel):
    """The whole desired state, after validation and after filling server defaults."""

    accounts: tuple[Account, ...]
    projects: dict[str, ProjectLink]
    defaults: SendingDefaults
    employees: dict[str, Employee]
    queues: tuple[str, ...]
    oauth: OAuthApps
    policies: Policies

    def account(self, address: str) -> Account | None:
        wanted = address_key(address) or address.lower()
        return next((a for a in self.accounts if a.address.lower() == wanted), None)

    def projects_of(self, address: str) -> list[str]:
        """The projects/sales channels that send from ``address`` (shown under it in the overview)."""
        wanted = address_key(address) or address.lower()
        return [code for code, link in self.projects.items() if link.email.lower() == wanted]
