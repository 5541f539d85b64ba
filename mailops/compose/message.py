"""A send request becomes the message the spec describes: sender, copies, greeting, signature, template.

Every setting of "Standard Einstellung E-Mail (bei Versand von E-Mails)" has its effect
here, and :attr:`Composed.explanation` says which setting decided what (``send --explain``).
Nothing from the request reaches a header unchecked: addresses are validated and made
canonical, and a subject, name or file name with a control character is refused.
Whether the sending account is live and connected is for the caller to check.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic_core import PydanticCustomError

from mailops.compose.htmlbody import html_to_text, inline_image_names, text_to_html
from mailops.compose.personal import FIELD_OF, render, values_of, variables_in
from mailops.errors import MailopsError, quoted
from mailops.fileio import FileReadError, MiB, NotUtf8Error, decode_utf8, line_and_column, read_bytes
from mailops.spec.checks import MAX_TEMPLATE_BYTES
from mailops.spec.models import (
    CONTENT_PLACEHOLDER,
    Account,
    Employee,
    Spec,
    canonical_address,
    control_in_text,
    single_line,
)
from mailops.spec.yamldoc import describe_character

MAX_ATTACHMENT_BYTES = 25 * MiB
PREVIEW_CHARACTERS = 200

Failure = Literal[
    "no_recipient",
    "file_access",
    "file_open",
    "unknown_project",
    "unknown_employee",
    "missing_employee",
    "invalid_address",
    "invalid_header",
    "invalid_body",
]


class ComposeError(MailopsError):
    """The request cannot become a mail; ``failure`` says which kind of problem it is.

    ``account`` is the account that would have sent, once that was decided (a failed
    mail is logged under it), else None.
    """

    def __init__(self, failure: Failure, message: str, *, account: Account | None = None):
        super().__init__(message)
        self.failure: Failure = failure
        self.account = account


@dataclass(frozen=True)
class SendRequest:
    to: tuple[str, ...]
    subject: str
    body: str  # text, or HTML when html=True
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    html: bool = False
    attachments: tuple[Path, ...] = ()
    project: str | None = None  # a project / sales channel code from the spec's `projects:`
    acting_user: str | None = None  # an employee key of the spec's `employees:` (the --as user)
    # Send from this account of the spec, whatever the project and the defaults say (an auto-reply
    # answers from the account that received the mail).
    account: str | None = None
    in_reply_to: str | None = None  # the Message-ID answered: "<id>"
    references: tuple[str, ...] = ()  # the thread's Message-IDs, oldest first
    # A mail the system sends on its own (RFC 3834): the header is set, it goes to its recipient
    # only (no copies from the defaults), and no employee's details are filled in.
    auto_submitted: Literal["auto-replied"] | None = None


@dataclass(frozen=True)
class Composed:
    account: Account  # the spec account that sends
    sender: str  # envelope and From address (the account's address)
    sender_name: str
    to: tuple[str, ...]  # after merging defaults and removing duplicates
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    recipients: tuple[str, ...]  # the envelope recipients: to + cc + bcc
    # The message ready to send, serialized in the SMTP policy: Bcc is not in its headers. Kept as
    # bytes, which is what is logged and sent: a batch holds thousands of mails, and an
    # EmailMessage tree per mail would cost memory and the garbage collector's time.
    raw: bytes
    subject: str
    message_id: str
    project: str | None
    preview: str  # the first 200 characters of the text body
    explanation: tuple[tuple[str, str], ...]  # (what, how it was decided), for `send --explain`

    @cached_property
    def message(self) -> EmailMessage:
        """The message as an EmailMessage (parsed from :attr:`raw` when asked for)."""
        return message_of(self.raw)


def message_of(raw: bytes) -> EmailMessage:
    """A serialized message, parsed in the SMTP policy."""
    message = message_from_bytes(raw, policy=SMTP)
    assert isinstance(message, EmailMessage)
    return message


Notes = list[tuple[str, str]]
_Part = tuple[str, bytes, tuple[str, str]]  # file name, content, (maintype, subtype)


def compose(
    spec: Spec,
    request: SendRequest,
    *,
    config_dir: Path,
    now: dt.datetime | None = None,
    files: TemplateFiles | None = None,
) -> Composed:
    """The mail ``request`` asks for, as the spec describes it; :class:`ComposeError` when it cannot be made.

    Mails composed with the same ``files`` share one reading of the HTML template and its
    inline images (a batch reads them once); without it they are read for this mail.
    """
    notes: Notes = []
    account, sender_name = _sender(spec, request.project, notes, request.account)
    try:
        return _compose_for(
            account, sender_name, spec, request, config_dir, now, notes, files if files is not None else TemplateFiles()
        )
    except ComposeError as exc:
        exc.account = account
        raise


def _compose_for(
    account: Account,
    sender_name: str,
    spec: Spec,
    request: SendRequest,
    config_dir: Path,
    now: dt.datetime | None,
    notes: Notes,
    files: TemplateFiles,
) -> Composed:
    sender = account.address
    sender_name = _header_text("sender name", sender_name)
    subject = _header_text("subject", request.subject)
    to, cc, bcc = _recipients(spec, request, sender, notes)

    employee = _employee(spec, request.acting_user)
    if employee is None and request.auto_submitted is not None:
        employee = _NOBODY  # the lines with an employee's variables are dropped
    greeting = _personal_text("greeting", spec.defaults.greeting, "from the defaults", employee, notes)
    if account.signature:
        signature_text, origin = account.signature, "the account's own"
    else:
        signature_text, origin = spec.defaults.signature, "from the defaults"
    signature = _personal_text("signature", signature_text, origin, employee, notes)

    body = _checked_body(_unix_lines(request.body))
    closing = [part for part in (greeting, signature) if part]
    template = _template(spec, config_dir, notes, files)
    markup: str | None = None
    if request.html:
        markup = body + "".join(f"\n<p>{text_to_html(part)}</p>" for part in closing)
    elif template is not None:
        markup = text_to_html("\n\n".join(part for part in (body, *closing) if part))
    if markup is not None and template is not None:
        markup = template.text.replace(CONTENT_PLACEHOLDER, markup)
    if markup is None:
        text = "\n\n".join(part for part in (body, *closing) if part)
        images: list[_Part] = []
    else:
        text = html_to_text(markup)
        notes.append(("text part", "generated from the HTML by inscriptis"))
        images = _inline_images(markup, template, notes, files)
    attachments = [_attachment(path, notes) for path in request.attachments]

    message = EmailMessage(policy=SMTP)
    message["From"] = formataddr((sender_name, sender))
    # A mail to copies only names its To as an empty group, as mail programs do (RFC 5322 3.4).
    message["To"] = ", ".join(to) if to else "undisclosed-recipients:;"
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Date"] = format_datetime(_aware(now or dt.datetime.now(dt.UTC)))
    message_id = make_msgid(domain=sender.rpartition("@")[2])
    message["Message-ID"] = message_id
    message["X-Mailer"] = "mailops"
    for name, value in _reply_headers(request):
        message[name] = value
    message.set_content(text, cte=_transfer_encoding(text))
    if markup is not None:
        message.add_alternative(markup, subtype="html", cte=_transfer_encoding(markup))
        html_part = next(part for part in message.iter_parts() if part.get_content_type() == "text/html")
        for name, data, (maintype, subtype) in images:
            html_part.add_related(
                data, maintype=maintype, subtype=subtype, cid=f"<{name}>", filename=name, disposition="inline"
            )
    for filename, data, (maintype, subtype) in attachments:
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)

    return Composed(
        account=account,
        sender=sender,
        sender_name=sender_name,
        to=to,
        cc=cc,
        bcc=bcc,
        recipients=to + cc + bcc,
        raw=message.as_bytes(),
        subject=subject,
        message_id=message_id,
        project=request.project,
        preview=text[:PREVIEW_CHARACTERS],
        explanation=tuple(notes),
    )


# --- sender -------------------------------------------------------------------------


def _sender(spec: Spec, project: str | None, notes: Notes, named: str | None = None) -> tuple[Account, str]:
    """The sending account and its name: the account the request names, else the project's link, else
    the defaults."""
    link = None
    if named is not None:
        address = named
        notes.append(("account", f"{address}, named by the request"))
        project = None  # a link's sender name belongs to the link's account
    elif project is not None:
        link = spec.projects.get(project)
        if link is None:
            known = ", ".join(sorted(spec.projects)) or "none"
            raise ComposeError(
                "unknown_project", f"unknown project {quoted(project)}; the spec's `projects:` declares {known}"
            )
        address = link.email
        notes.append(("account", f"project {project} links {address}"))
    else:
        address = spec.defaults.email
        notes.append(("account", f"{address} from the defaults (no project given)"))
    account = spec.account(address)
    if account is None:  # the spec loader makes sure every link and the defaults name an account
        raise MailopsError(f"{address} is not an account of the spec")

    if link is not None and link.sender_name:
        notes.append(("sender name", f"from the link of project {project}"))
        return account, link.sender_name
    if spec.defaults.sender_name:
        why = f"; the link of project {project} names none" if project is not None else ""
        notes.append(("sender name", f"from the defaults{why}"))
        return account, spec.defaults.sender_name
    notes.append(("sender name", "the account's display name"))
    return account, account.display_name or ""


def _header_text(what: str, value: str) -> str:
    try:
        return single_line(value)
    except PydanticCustomError as exc:
        raise ComposeError("invalid_header", f"the {what} {quoted(value)} is refused: {exc.message()}") from None


_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}>")  # printable ASCII, no < or > inside: nothing can break the header
_MAX_REFERENCES = 20
_AUTO_SUBMITTED = frozenset({"auto-replied"})


def _reply_headers(request: SendRequest) -> list[tuple[str, str]]:
    """In-Reply-To, References and Auto-Submitted as the request asks, each checked."""
    headers = []
    if request.in_reply_to is not None:
        headers.append(("In-Reply-To", _message_id("In-Reply-To", request.in_reply_to)))
    if request.references:
        if len(request.references) > _MAX_REFERENCES:
            raise ComposeError("invalid_header", f"References: more than {_MAX_REFERENCES} message ids")
        headers.append(("References", " ".join(_message_id("References", value) for value in request.references)))
    if request.auto_submitted is not None:
        if request.auto_submitted not in _AUTO_SUBMITTED:
            raise ComposeError("invalid_header", f"Auto-Submitted {quoted(request.auto_submitted)} is refused")
        headers.append(("Auto-Submitted", request.auto_submitted))
    return headers


def _message_id(header: str, value: str) -> str:
    if not _MESSAGE_ID.fullmatch(value):
        raise ComposeError("invalid_header", f"{header}: {quoted(value)} is not a message id")
    return value


# --- recipients ---------------------------------------------------------------------


def _address(value: str, field: str) -> str:
    try:
        return canonical_address(single_line(value.strip()))
    except PydanticCustomError as exc:
        raise ComposeError("invalid_address", f"{field} address {quoted(value)}: {exc.message()}") from None


def _recipients(
    spec: Spec, request: SendRequest, sender: str, notes: Notes
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """To, CC and BCC: the defaults' copies added, each address once (in its first list), no copy to the sender."""
    if not (request.to or request.cc or request.bcc):  # a mail to BCC only (a newsletter) is fine
        raise ComposeError("no_recipient", "You must provide at least one recipient email address")
    defaults = spec.defaults
    automatic = request.auto_submitted is not None
    default_cc = [] if automatic else list(defaults.cc)
    default_bcc = [defaults.bcc] if defaults.bcc is not None and not automatic else []
    lists: dict[str, list[tuple[str, bool]]] = {  # field -> (address, from the defaults)
        "To": [(_address(value, "To"), False) for value in request.to],
        "Cc": [(_address(value, "Cc"), False) for value in request.cc] + [(a, True) for a in default_cc],
        "Bcc": [(_address(value, "Bcc"), False) for value in request.bcc] + [(a, True) for a in default_bcc],
    }
    for field, defaults_list in (("cc", default_cc), ("bcc", default_bcc)):
        if automatic:
            notes.append((field, "none from the defaults: an automatic reply goes to its recipient only"))
        elif not defaults_list:
            notes.append((field, "none in the defaults"))
    seen: dict[str, str] = {}
    kept: dict[str, list[str]] = {"To": [], "Cc": [], "Bcc": []}
    sender_key = sender.lower()
    for field, entries in lists.items():
        for address, from_defaults in entries:
            key = address.lower()
            if key in seen:
                where = f"already in {seen[key]}" if seen[key] != field else "given twice"
                notes.append(("removed", f"{address} from {field}: {where}"))
                continue
            if field != "To" and key == sender_key:
                notes.append(("removed", f"{address}: the sender gets no copy of its own"))
                continue
            if from_defaults:
                notes.append((field.lower(), f"{address} from the defaults"))
            seen[key] = field
            kept[field].append(address)
    return tuple(kept["To"]), tuple(kept["Cc"]), tuple(kept["Bcc"])


# --- greeting and signature ---------------------------------------------------------


def _employee(spec: Spec, acting_user: str | None) -> tuple[str, Employee] | None:
    if acting_user is None:
        return None
    employee = spec.employees.get(acting_user)
    if employee is None:
        known = ", ".join(sorted(spec.employees)) or "none"
        raise ComposeError(
            "unknown_employee", f"unknown employee {quoted(acting_user)}; the spec's `employees:` declares {known}"
        )
    return acting_user, employee


# Who writes an automatic mail: nobody, whose details are all empty, so the lines that need them go.
_NOBODY = ("nobody (an automatic mail)", Employee.model_construct(name="", phone="", mobile="", fax="", email=None))


def _personal_text(what: str, text: str, origin: str, employee: tuple[str, Employee] | None, notes: Notes) -> str:
    if not text.strip():
        notes.append(
            (
                what,
                "none: neither the account nor the defaults have one"
                if what == "signature"
                else "none in the defaults",
            )
        )
        return ""
    variables = variables_in(text)
    if not variables:
        notes.append((what, f"{origin}, without variables"))
        return text.strip("\n")
    if employee is None:
        raise ComposeError(
            "missing_employee",
            f"the {what} ({origin}) uses {{{variables[0]}}}, which needs the acting employee: "
            "pass --as EMPLOYEE or set MAILOPS_USER",
        )
    key, person = employee
    rendered = render(text, values_of(person))
    notes.append((what, f"{origin}, for employee {key}"))
    for line, names in rendered.dropped:
        lacking = " or ".join(FIELD_OF[name] for name in names)
        notes.append((what, f"line {quoted(line)} dropped: employee {key} has no {lacking}"))
    return rendered.text


def _unix_lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _checked_body(body: str) -> str:
    """``body`` (its line ends made LF) when it holds no character that a spec's text may not hold either (a
    server may cut a mail at a NUL; RFC 5322 and 2045 allow no controls in text); else where the first is."""
    bad = control_in_text(body)
    if bad is not None:
        line, column = line_and_column(body, bad.start())
        raise ComposeError(
            "invalid_body",
            f"the body has the control character {describe_character(bad.group())} at line {line}, column {column}; "
            "a mail's text may hold tabs and line breaks only",
        )
    return body


# --- template, inline images, attachments -------------------------------------------


@dataclass(frozen=True)
class _Template:
    relative: str  # as the defaults name it
    path: Path
    text: str


@dataclass(frozen=True)
class _Unusable:
    """A file that could not be used, as the ComposeError it gave."""

    failure: Failure
    message: str

    def error(self) -> ComposeError:
        return ComposeError(self.failure, self.message)


class TemplateFiles:
    """The HTML template and its inline images, each read and checked once for all the mails composed with it.

    A file that cannot be used gives every such mail the same :class:`ComposeError`, as reading it
    for each mail would. Made for one batch: a file changed meanwhile is not read again.
    """

    def __init__(self) -> None:
        self._templates: dict[tuple[str, Path], _Template | _Unusable] = {}
        self._images: dict[Path, bytes | _Unusable] = {}

    def template(self, relative: str, path: Path) -> _Template:
        key = (relative, path)
        if key not in self._templates:
            try:
                self._templates[key] = _read_template(relative, path)
            except ComposeError as exc:
                self._templates[key] = _Unusable(exc.failure, str(exc))
        found = self._templates[key]
        if isinstance(found, _Unusable):
            raise found.error()
        return found

    def image(self, path: Path) -> bytes:
        if path not in self._images:
            try:
                self._images[path] = _read(path, "inline image", MAX_ATTACHMENT_BYTES)
            except ComposeError as exc:
                self._images[path] = _Unusable(exc.failure, str(exc))
        found = self._images[path]
        if isinstance(found, _Unusable):
            raise found.error()
        return found


def _template(spec: Spec, config_dir: Path, notes: Notes, files: TemplateFiles) -> _Template | None:
    relative = spec.defaults.html_template
    if relative is None:
        notes.append(("template", "none in the defaults"))
        return None
    template = files.template(relative, config_dir / relative)
    notes.append(("template", relative))
    return template


def _read_template(relative: str, path: Path) -> _Template:
    data = _read(path, "HTML template", MAX_TEMPLATE_BYTES)
    try:
        text = decode_utf8(data)
    except NotUtf8Error as exc:
        raise ComposeError(
            "file_open", f"File Error: Could not open file {path} (HTML template): {exc.line}:{exc.column}: {exc}"
        ) from None
    if CONTENT_PLACEHOLDER not in text:
        raise ComposeError(
            "file_open", f"File Error: the HTML template {path} has no {CONTENT_PLACEHOLDER} for the mail's content"
        )
    return _Template(relative, path, _unix_lines(text))


# A cid: name is looked up as a file next to the template: a plain file name, no path.
_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]*")


def _inline_images(markup: str, template: _Template | None, notes: Notes, files: TemplateFiles) -> list[_Part]:
    images: list[_Part] = []
    for name in inline_image_names(markup):
        if not _IMAGE_NAME.fullmatch(name):
            raise ComposeError(
                "file_access",
                f"Could not access file {quoted(name)} (inline image cid:{name}): "
                "an inline image is a plain file name next to the HTML template, without a path",
            )
        if template is None:
            raise ComposeError(
                "file_access",
                f"Could not access file {name} (inline image cid:{name}): inline images are files next to "
                "the HTML template, and the defaults name no `html_template`",
            )
        mime_type = _mime_type(name)
        if mime_type[0] != "image":  # cid: shows a picture; it is no way to attach the template's neighbours
            raise ComposeError(
                "file_access",
                f"Could not access file {name} (inline image cid:{name}): an inline image must be a picture "
                f"(.png, .jpg, .gif, ...), not {'/'.join(mime_type)}",
            )
        path = template.path.parent / name
        images.append((name, files.image(path), mime_type))
        notes.append(("inline image", f"cid:{name} from {Path(template.relative).parent / name}"))
    return images


def _attachment(path: Path, notes: Notes) -> _Part:
    filename = path.name
    try:
        single_line(filename)
    except PydanticCustomError as exc:
        raise ComposeError(
            "invalid_header", f"the attachment's file name {quoted(filename)} is refused: {exc.message()}"
        ) from None
    data = _read(path, "attachment", MAX_ATTACHMENT_BYTES)
    mime_type = _mime_type(filename)
    notes.append(("attachment", f"{filename} ({'/'.join(mime_type)}, {len(data)} bytes)"))
    return filename, data, mime_type


def _read(path: Path, what: str, limit: int) -> bytes:
    try:
        return read_bytes(path, limit=limit, what=what)
    except FileReadError as exc:
        if exc.missing:
            raise ComposeError("file_access", f"Could not access file {path} ({what}): not found") from None
        raise ComposeError("file_open", f"File Error: Could not open file {path}: {exc}") from None


def _mime_type(filename: str) -> tuple[str, str]:
    guessed, encoding = mimetypes.guess_type(filename, strict=False)
    if guessed is None or encoding is not None:  # `.tar.gz` is gzip data, whatever is inside
        guessed = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}.get(
            encoding or "", "application/octet-stream"
        )
    maintype, _, subtype = guessed.partition("/")
    return maintype, subtype


# --- headers and parts --------------------------------------------------------------


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.astimezone()


def _transfer_encoding(text: str) -> str | None:
    """Quoted-printable for non-ASCII text, so that no server needs 8BITMIME; else as the email package decides."""
    return None if text.isascii() else "quoted-printable"
