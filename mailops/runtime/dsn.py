"""Delivery status notifications (RFC 3464): recognising one, and reading what it reports, without ever failing.

A DSN is a ``multipart/report; report-type=delivery-status`` message. Its
``message/delivery-status`` part holds a block of fields about the message (``Reporting-MTA``,
``Original-Envelope-Id``) and one block per recipient (``Final-Recipient``, ``Action``,
``Status``, ``Diagnostic-Code``). The original comes back whole (``message/rfc822``, as Postfix
sends it) or as its header alone (``text/rfc822-headers``, as Exchange does); its Message-ID is
what ties the report to the mail that was sent. The RFC 6533 forms (``message/global-*``) are read
alike.

Only the report at the top of a message counts: a DSN forwarded inside someone's mail is that
person's mail, not a report to us. Anything unreadable is left out (a report without the original
header has no Message-ID, a recipient without a Status none); nothing raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from email.policy import compat32

from mailops.runtime.headers import message_id_of, parts_are_bounded, storable

MAX_RECIPIENTS = 100  # recipient blocks read of one report
MAX_BLOCK_BYTES = 256 * 1024  # of the delivery-status part, read at most
MAX_HEADER_BYTES = 1024 * 1024  # read of a message's header to see whether it is a report
MAX_MESSAGE_ID = 250  # the outbox keeps no longer Message-ID: a longer one matches nothing
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"^\s*([245]\d\d)\b")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_STATUS_PARTS = ("message/delivery-status", "message/global-delivery-status")
_RETURNED_MESSAGE = ("message/rfc822", "message/global")
_RETURNED_HEADERS = ("text/rfc822-headers", "message/global-headers")
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's block of a report."""

    recipient: str  # Final-Recipient (else Original-Recipient), without its address type
    action: str  # failed | delayed | delivered | relayed | expanded | "" (missing or unknown)
    status: str | None  # the enhanced status code, e.g. 5.1.1
    diagnostic: str | None  # Diagnostic-Code without its type ("smtp; "), unfolded
    remote_mta: str | None

    @property
    def failed(self) -> bool:
        """The mail did not reach this recipient: Action says so, or (without one) a 5.x.x Status."""
        if self.action:
            return self.action == "failed"
        return self.status is not None and self.status.startswith("5.")

    @property
    def smtp_code(self) -> int | None:
        """The SMTP reply code the diagnostic starts with (``550 5.1.1 ...``), if it does."""
        match = _REPLY_CODE.match(self.diagnostic or "")
        return int(match.group(1)) if match else None

    def as_dict(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class DeliveryReport:
    reporting_mta: str | None
    envelope_id: str | None  # Original-Envelope-Id, xtext decoded
    original_message_id: str | None  # of the returned message or header: "<id>"
    recipients: tuple[RecipientStatus, ...]

    @property
    def failed(self) -> tuple[RecipientStatus, ...]:
        return tuple(recipient for recipient in self.recipients if recipient.failed)

    def original_ids(self) -> tuple[str, ...]:
        """The Message-IDs the sent mail may carry, most telling first: the returned header's, then the
        envelope id's (a sender that sets ENVID to the Message-ID), bracketed or as it is."""
        found = [self.original_message_id] if self.original_message_id else []
        if self.envelope_id:
            envelope = _clean_message_id(message_id_of(self.envelope_id) or "")
            if envelope is not None:
                found.append(envelope)
        return tuple(dict.fromkeys(found))


def read_delivery_report(raw: bytes) -> DeliveryReport | None:
    """The report ``raw`` is, or None when it is no DSN (or one with more parts than a report has, see
    :func:`parts_are_bounded`); never raises. Only a message whose header says it is a report is parsed whole."""
    try:
        header = BytesHeaderParser(policy=compat32).parsebytes(raw[:MAX_HEADER_BYTES])
        if header.get_content_type() != "multipart/report" or not parts_are_bounded(raw):
            return None
        message = message_from_bytes(raw, policy=compat32)
        if message.get_content_type() != "multipart/report":
            return None
        if str(message.get_param("report-type", "", header="content-type")).strip().lower() != "delivery-status":
            return None
        parts = message.get_payload()
    except Exception:  # noqa: BLE001 - unreadable: not a report we can use
        return None
    if not isinstance(parts, list):
        return None
    per_message: dict[str, str] = {}
    recipients: list[RecipientStatus] = []
    original: str | None = None
    for part in parts:
        if not isinstance(part, Message):
            continue
        kind = _content_type(part)
        if kind in _STATUS_PARTS and not recipients:
            blocks = _blocks(part)
            if blocks:
                per_message = blocks[0]
                recipients = [_recipient(block) for block in blocks[1 : MAX_RECIPIENTS + 1]]
        elif kind in _RETURNED_MESSAGE and original is None:
            original = _returned_message_id(part)
        elif kind in _RETURNED_HEADERS and original is None:
            original = _returned_headers_message_id(part)
    return DeliveryReport(
        reporting_mta=_typed_value(per_message.get("reporting-mta")),
        envelope_id=_xtext(per_message.get("original-envelope-id")),
        original_message_id=original,
        recipients=tuple(recipients),
    )


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001
        return ""


def _blocks(part: Message) -> list[dict[str, str]]:
    """The field blocks of a delivery-status part: the per-message one first, then one per recipient.

    The parser splits ``message/delivery-status`` into blocks itself; other forms (the global one,
    or one it could not split) are read from the part's text.
    """
    payload = part.get_payload()
    blocks: list[dict[str, str]] = []
    if isinstance(payload, list):
        for block in payload:
            if not isinstance(block, Message):
                continue
            blocks.append(_fields(block))
            rest = block.get_payload()
            if isinstance(rest, str) and rest.strip():  # the global form: the blocks after the first one
                blocks += _text_blocks(rest)
        return [block for block in blocks if block]
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return _text_blocks(data[:MAX_BLOCK_BYTES].decode("utf-8", "replace"))
    return []


def _text_blocks(text: str) -> list[dict[str, str]]:
    text = text.replace("\r\n", "\n")[:MAX_BLOCK_BYTES]
    found = []
    for chunk in re.split(r"\n[ \t]*\n", text):
        if chunk.strip():
            fields = _fields(HeaderParser(policy=compat32).parsestr(chunk.strip("\n") + "\n\n", headersonly=True))
            if fields:
                found.append(fields)
        if len(found) > MAX_RECIPIENTS:
            break
    return found


def _fields(block: Message) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in block.items():
        fields.setdefault(str(name).strip().lower(), storable(" ".join(str(value).split())))
    return fields


def _recipient(fields: dict[str, str]) -> RecipientStatus:
    action = fields.get("action", "").split(" ")[0].strip().lower()
    status = _STATUS.search(fields.get("status", ""))
    return RecipientStatus(
        recipient=_typed_value(fields.get("final-recipient") or fields.get("original-recipient")) or "",
        action=action if action in _ACTIONS else "",
        status=".".join(status.groups()) if status else None,
        diagnostic=_typed_value(fields.get("diagnostic-code")),
        remote_mta=_typed_value(fields.get("remote-mta")),
    )


def _typed_value(value: str | None) -> str | None:
    """``rfc822; a@b`` -> ``a@b``: the value after its type (the whole value when it names none)."""
    if not value:
        return None
    kind, separator, rest = value.partition(";")
    text = (rest if separator and " " not in kind.strip() else value).strip()
    return text or None


def _xtext(value: str | None) -> str | None:
    """An xtext (RFC 3461: ``+HH`` for a byte) decoded; None when empty or not text."""
    if not value:
        return None
    decoded = re.sub(r"\+([0-9A-Fa-f]{2})", lambda match: chr(int(match.group(1), 16)), value.strip())
    return decoded if decoded and not _CONTROL.search(decoded) else None


def _returned_message_id(part: Message) -> str | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return _clean_message_id(message_id_of(_header(payload[0], "Message-ID")) or "")
    return None


def _returned_headers_message_id(part: Message) -> str | None:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return None
    headers = BytesHeaderParser(policy=compat32).parsebytes(data[:MAX_BLOCK_BYTES])
    return _clean_message_id(message_id_of(_header(headers, "Message-ID")) or "")


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # noqa: BLE001
        return ""
    return " ".join(str(value).split()) if value is not None else ""


def _clean_message_id(message_id: str) -> str | None:
    """A Message-ID fit to look up: printable ASCII, not longer than the outbox keeps (else None)."""
    if not message_id or len(message_id) > MAX_MESSAGE_ID or not message_id.isascii() or _CONTROL.search(message_id):
        return None
    return message_id
