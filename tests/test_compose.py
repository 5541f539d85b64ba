"""Composing a mail: every sending setting of the spec has its effect, and the explanation says which.

Each test parses the produced message back with the `email` package, as a receiving
client would, instead of looking at the objects that built it.
"""

from __future__ import annotations

import datetime as dt
import email
import os
import re
from email.message import EmailMessage
from email.policy import SMTP, default
from pathlib import Path

import pytest

from mailops.compose import Composed, ComposeError, SendRequest, compose
from mailops.spec import load_spec
from mailops.spec.models import Spec

NOW = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)

ACCOUNTS = """\
accounts:
  - address: a@example.com
    provider: manual
    display_name: A Desk
    username: a
    password: {env: A_PASSWORD}
    imap: {host: imap.example.com, port: 993, encryption: ssl}
    smtp: {host: smtp.example.com, port: 587, encryption: starttls}
  - address: shop@example.com
    provider: manual
    display_name: Shop Account
    username: shop
    password: {env: SHOP_PASSWORD}
    imap: {host: imap.example.com, port: 993, encryption: ssl}
    smtp: {host: smtp.example.com, port: 587, encryption: starttls}
    signature: "Shop team\\n{MITARBEITER}"
projects:
  SHOP: {email: shop@example.com, sender_name: "Müller & Söhne"}
  PLAIN: {email: shop@example.com}
  DESK: {email: a@example.com}
"""

DEFAULTS = """\
defaults:
  email: a@example.com
  sender_name: Example GmbH
  signature: "{MITARBEITER}\\nTel. {MITARBEITER_TELEFON}\\nMobil {MITARBEITER_MOBIL}\\n\\
    E-Mail {MITARBEITER_EMAIL}\\nFax {MITARBEITER_TELEFAX}"
  greeting: "Kind regards"
  cc: [office@example.com, A@Example.com]
  bcc: archive@example.com
%(template)s
employees:
  alice:
    name: Alice Meyer
    email: alice@example.com
    phone: "+49 30 1234567"
    mobile: "+49 170 1234567"
    fax: "+49 30 1234568"
  bob: {name: Bob Schulz, phone: "+49 30 7654321"}
queues: [support]
"""

TEMPLATE = """\
<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Example</title></head>
<body>
<table><tr><td><img src="cid:logo.png" alt="Logo"></td></tr>
<tr><td>{CONTENT}</td></tr>
<tr><td>Example GmbH · Musterstraße 1</td></tr></table>
</body>
</html>
"""

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@pytest.fixture
def plain_spec(write_config) -> tuple[Spec, Path]:
    """The spec without an HTML template: text mails."""
    config = write_config(ACCOUNTS, DEFAULTS % {"template": ""})
    return load_spec(config).spec, config


@pytest.fixture
def html_spec(write_config) -> tuple[Spec, Path]:
    """The spec with an HTML template and its logo next to it."""
    config = write_config(
        ACCOUNTS,
        DEFAULTS % {"template": "  html_template: templates/mail.html"},
        files={"templates/mail.html": TEMPLATE},
    )
    (config / "templates" / "logo.png").write_bytes(PNG)
    return load_spec(config).spec, config


def request(**fields: object) -> SendRequest:
    values: dict[str, object] = {"to": ("kunde@example.org",), "subject": "Hello", "body": "Body text"}
    values.update(fields)
    return SendRequest(**values)  # type: ignore[arg-type]


def make(spec_and_dir: tuple[Spec, Path], **fields: object) -> Composed:
    spec, config = spec_and_dir
    return compose(spec, request(**fields), config_dir=config, now=NOW)


def parsed(composed: Composed) -> EmailMessage:
    """The message as a receiver sees it: serialised for SMTP, then parsed."""
    message = email.message_from_bytes(composed.message.as_bytes(policy=SMTP), policy=default)
    assert isinstance(message, EmailMessage)
    return message


def plain_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def html_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None and part.get_content_type() == "text/html"
    return str(part.get_content()).replace("\r\n", "\n")


def failure_of(spec_and_dir: tuple[Spec, Path], **fields: object) -> ComposeError:
    with pytest.raises(ComposeError) as caught:
        make(spec_and_dir, **fields)
    return caught.value


# --- sender -------------------------------------------------------------------------


def test_without_a_project_the_defaults_account_sends_under_the_defaults_name(plain_spec) -> None:
    composed = make(plain_spec, acting_user="alice")
    message = parsed(composed)
    assert composed.account.address == composed.sender == "a@example.com"
    assert message["From"].addresses[0].addr_spec == "a@example.com"
    assert message["From"].addresses[0].display_name == "Example GmbH"
    assert ("account", "a@example.com from the defaults (no project given)") in composed.explanation
    assert ("sender name", "from the defaults") in composed.explanation


def test_the_project_link_wins_over_the_defaults_for_account_and_name(plain_spec) -> None:
    composed = make(plain_spec, project="SHOP", acting_user="alice")
    message = parsed(composed)
    assert composed.sender == "shop@example.com" and composed.project == "SHOP"
    assert message["From"].addresses[0].addr_spec == "shop@example.com"
    assert message["From"].addresses[0].display_name == "Müller & Söhne"
    assert ("account", "project SHOP links shop@example.com") in composed.explanation
    assert ("sender name", "from the link of project SHOP") in composed.explanation


def test_a_link_without_a_name_takes_the_defaults_name(plain_spec) -> None:
    composed = make(plain_spec, project="PLAIN", acting_user="alice")
    assert composed.sender == "shop@example.com"
    assert parsed(composed)["From"].addresses[0].display_name == "Example GmbH"
    assert ("sender name", "from the defaults; the link of project PLAIN names none") in composed.explanation


def test_without_any_configured_name_the_accounts_display_name_is_used(plain_spec) -> None:
    spec, config = plain_spec
    # The loader requires defaults.sender_name; a spec built otherwise may lack it.
    nameless = spec.model_copy(update={"defaults": spec.defaults.model_copy(update={"sender_name": ""})})
    composed = compose(nameless, request(project="PLAIN", acting_user="alice"), config_dir=config, now=NOW)
    assert parsed(composed)["From"].addresses[0].display_name == "Shop Account"
    assert ("sender name", "the account's display name") in composed.explanation


def test_an_unknown_project_is_refused_naming_the_known_ones(plain_spec) -> None:
    error = failure_of(plain_spec, project="AMAZON", acting_user="alice")
    assert error.failure == "unknown_project"
    assert "AMAZON" in str(error) and "DESK, PLAIN, SHOP" in str(error)


# --- greeting and signature ---------------------------------------------------------


def test_text_body_greeting_and_signature_are_separated_by_blank_lines(plain_spec) -> None:
    composed = make(plain_spec, acting_user="alice", body="Dear customer,\n\nyour order shipped.")
    message = parsed(composed)
    assert message.get_content_type() == "text/plain"
    assert plain_text(message) == (
        "Dear customer,\n\nyour order shipped.\n\nKind regards\n\n"
        "Alice Meyer\nTel. +49 30 1234567\nMobil +49 170 1234567\nE-Mail alice@example.com\nFax +49 30 1234568\n"
    )
    assert ("signature", "from the defaults, for employee alice") in composed.explanation
    assert ("greeting", "from the defaults, without variables") in composed.explanation


def test_a_line_whose_variables_are_empty_is_dropped_whole(plain_spec) -> None:
    composed = make(plain_spec, acting_user="bob")
    text = plain_text(parsed(composed))
    assert text.endswith("Kind regards\n\nBob Schulz\nTel. +49 30 7654321\n")
    assert "Mobil" not in text and "Fax" not in text and "E-Mail" not in text
    assert ("signature", "line `Mobil {MITARBEITER_MOBIL}` dropped: employee bob has no mobile") in composed.explanation
    assert ("signature", "line `Fax {MITARBEITER_TELEFAX}` dropped: employee bob has no fax") in composed.explanation


def test_the_accounts_own_signature_wins_over_the_defaults(plain_spec) -> None:
    composed = make(plain_spec, project="SHOP", acting_user="bob")
    assert plain_text(parsed(composed)) == "Body text\n\nKind regards\n\nShop team\nBob Schulz\n"
    assert ("signature", "the account's own, for employee bob") in composed.explanation


def test_a_signature_with_variables_needs_an_acting_employee(plain_spec) -> None:
    error = failure_of(plain_spec)
    assert error.failure == "missing_employee"
    assert "--as" in str(error) and "MAILOPS_USER" in str(error) and "{MITARBEITER}" in str(error)


def test_texts_without_variables_need_no_employee(write_config) -> None:
    defaults = DEFAULTS % {"template": ""}
    defaults = re.sub(r'(?ms)^  signature: ".*?"$', lambda _: '  signature: "Example GmbH\\nBerlin"', defaults)
    config = write_config(ACCOUNTS, defaults)
    composed = compose(load_spec(config).spec, request(), config_dir=config, now=NOW)
    assert plain_text(parsed(composed)) == "Body text\n\nKind regards\n\nExample GmbH\nBerlin\n"
    assert ("signature", "from the defaults, without variables") in composed.explanation


def test_an_unknown_acting_user_is_refused(plain_spec) -> None:
    error = failure_of(plain_spec, acting_user="mallory")
    assert error.failure == "unknown_employee"
    assert "mallory" in str(error) and "alice, bob" in str(error)


# --- recipients ---------------------------------------------------------------------


def test_the_defaults_copies_are_added_and_bcc_stays_out_of_the_headers(plain_spec) -> None:
    composed = make(
        plain_spec, project="SHOP", acting_user="alice", cc=("boss@example.org",), bcc=("audit@example.org",)
    )
    message = parsed(composed)
    assert composed.to == ("kunde@example.org",)
    # The local part keeps its case (A@Example.com); the domain is made canonical.
    assert composed.cc == ("boss@example.org", "office@example.com", "A@example.com")
    assert composed.bcc == ("audit@example.org", "archive@example.com")
    assert composed.recipients == composed.to + composed.cc + composed.bcc
    assert message["To"] == "kunde@example.org"
    assert [a.addr_spec for a in message["Cc"].addresses] == list(composed.cc)
    assert message["Bcc"] is None and b"archive@example.com" not in composed.message.as_bytes(policy=SMTP)
    assert ("cc", "office@example.com from the defaults") in composed.explanation
    assert ("bcc", "archive@example.com from the defaults") in composed.explanation


def test_duplicates_are_removed_across_lists_case_insensitively(plain_spec) -> None:
    composed = make(
        plain_spec,
        project="SHOP",
        acting_user="alice",
        to=("kunde@example.org", "Office@Example.com", "KUNDE@example.org"),
        cc=("kunde@EXAMPLE.org",),
        bcc=("office@example.com", "Archive@example.com"),
    )
    assert composed.to == ("kunde@example.org", "Office@example.com")
    assert composed.cc == ("A@example.com",)
    assert composed.bcc == ("Archive@example.com",)
    assert len({address.lower() for address in composed.recipients}) == len(composed.recipients)
    assert ("removed", "KUNDE@example.org from To: given twice") in composed.explanation
    assert ("removed", "office@example.com from Cc: already in To") in composed.explanation
    assert ("removed", "archive@example.com from Bcc: given twice") in composed.explanation


def test_the_sender_gets_no_copy_of_its_own(plain_spec) -> None:
    # The defaults' CC holds A@Example.com, the address of the account that sends by default.
    composed = make(plain_spec, acting_user="alice", bcc=("A@example.com",))
    assert "a@example.com" not in [address.lower() for address in composed.cc + composed.bcc]
    assert composed.cc == ("office@example.com",)
    assert ("removed", "A@example.com: the sender gets no copy of its own") in composed.explanation
    assert "a@example.com" not in str(parsed(composed)["Cc"])


def test_a_mail_to_the_sending_account_itself_is_kept(plain_spec) -> None:
    composed = make(plain_spec, acting_user="alice", to=("a@example.com",))
    assert composed.to == ("a@example.com",)


def test_at_least_one_recipient_is_needed(plain_spec) -> None:
    error = failure_of(plain_spec, acting_user="alice", to=(), cc=(), bcc=())
    assert error.failure == "no_recipient"
    assert str(error) == "You must provide at least one recipient email address"


def test_a_mail_to_copies_only_names_an_empty_to_group(plain_spec) -> None:
    mail = make(plain_spec, acting_user="alice", to=(), bcc=("list@example.org",))
    assert mail.message["To"] == "undisclosed-recipients:;"
    assert "list@example.org" in mail.recipients and mail.message["Bcc"] is None


@pytest.mark.parametrize(
    ("field", "address"),
    [
        ("to", "not-an-address"),
        ("cc", "boss@"),
        ("bcc", "audit@exa mple.org"),
        ("to", "kunde@example.org\r\nBcc: victim@example.org"),
        ("cc", "jörg@example.org"),
    ],
)
def test_an_invalid_address_is_refused_by_name(plain_spec, field: str, address: str) -> None:
    fields: dict[str, object] = {"acting_user": "alice", field: (address,)}
    if field == "to":
        fields["to"] = ("kunde@example.org", address)
    error = failure_of(plain_spec, **fields)
    assert error.failure == "invalid_address"
    assert field.capitalize() in str(error)
    assert address.split("\r")[0] in str(error) and "\r" not in str(error)


def test_addresses_are_made_canonical(plain_spec) -> None:
    composed = make(plain_spec, acting_user="alice", to=(" info@bücher.example ",))
    assert composed.to == ("info@xn--bcher-kva.example",)
    assert parsed(composed)["To"] == "info@xn--bcher-kva.example"


# --- HTML template and inline images ------------------------------------------------


def test_the_template_wraps_an_escaped_text_body_with_line_breaks(html_spec) -> None:
    composed = make(html_spec, acting_user="bob", body="Price < 5 & more\nsecond line")
    message = parsed(composed)
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "multipart/related"]
    html = html_text(message)
    assert "Price &lt; 5 &amp; more<br>\nsecond line<br>\n<br>\nKind regards<br>\n<br>\nBob Schulz" in html
    assert "Musterstraße 1" in html and "{CONTENT}" not in html
    assert ("template", "templates/mail.html") in composed.explanation


def test_the_text_part_is_generated_from_the_final_html(html_spec) -> None:
    composed = make(html_spec, acting_user="bob", body="Price < 5 & more\nsecond line")
    text = plain_text(parsed(composed))
    assert text == (
        "Price < 5 & more\nsecond line\n\nKind regards\n\n"
        "Bob Schulz\nTel. +49 30 7654321\nExample GmbH · Musterstraße 1\n"
    )
    assert composed.preview == text[:200]
    assert ("text part", "generated from the HTML by inscriptis") in composed.explanation


def test_an_html_body_is_inserted_as_is(html_spec) -> None:
    body = '<p>See <a href="https://example.org/order/4711">your order</a>:</p><ul><li>one</li><li>two</li></ul>'
    composed = make(html_spec, acting_user="bob", body=body, html=True)
    message = parsed(composed)
    html = html_text(message)
    assert body in html
    assert "<p>Kind regards</p>" in html and "<p>Bob Schulz<br>\nTel. +49 30 7654321</p>" in html
    text = plain_text(message)
    assert "<" not in text
    assert "See [your order](https://example.org/order/4711):" in text
    assert "  * one\n  * two" in text
    assert text.index("two") < text.index("Kind regards") < text.index("Bob Schulz")


def test_inline_images_become_related_parts_with_their_content_id(html_spec) -> None:
    spec, config = html_spec
    (config / "templates" / "stamp.gif").write_bytes(b"GIF89a")
    composed = make(
        html_spec, acting_user="bob", body='<img src="cid:stamp.gif"> and <img src="cid:logo.png">', html=True
    )
    message = parsed(composed)
    related = next(part for part in message.walk() if part.get_content_type() == "multipart/related")
    parts = list(related.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/html", "image/png", "image/gif"]
    assert parts[1]["Content-ID"] == "<logo.png>" and parts[1].get_content() == PNG
    assert parts[2]["Content-ID"] == "<stamp.gif>" and parts[2].get_content() == b"GIF89a"
    assert parts[1].get_content_disposition() == "inline"
    assert ("inline image", "cid:logo.png from templates/logo.png") in composed.explanation


def test_a_missing_inline_image_is_a_file_access_error(html_spec) -> None:
    spec, config = html_spec
    (config / "templates" / "logo.png").unlink()
    error = failure_of(html_spec, acting_user="bob")
    assert error.failure == "file_access"
    assert "Could not access file" in str(error) and "logo.png" in str(error)


@pytest.mark.parametrize("name", ["../accounts.yaml", "..%2Faccounts.yaml", "/etc/passwd", ".hidden"])
def test_an_inline_image_outside_the_template_directory_is_refused(html_spec, name: str) -> None:
    error = failure_of(html_spec, acting_user="bob", body=f'<img src="cid:{name}">', html=True)
    assert error.failure == "file_access"
    assert "next to the HTML template" in str(error)


def test_without_a_template_an_html_body_gets_a_generated_text_part(plain_spec) -> None:
    composed = make(plain_spec, acting_user="bob", body="<h1>Offer</h1><p>Only <b>today</b></p>", html=True)
    message = parsed(composed)
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert plain_text(message).startswith("Offer\n\nOnly today\n\nKind regards\n\nBob Schulz")
    assert ("template", "none in the defaults") in composed.explanation


@pytest.mark.parametrize("html", [False, True])
def test_a_body_with_a_control_character_is_refused_where_it_is(plain_spec, html: bool) -> None:
    """NUL and the like may not travel in a mail's text (a server may cut it there): refused, with the place."""
    error = failure_of(plain_spec, acting_user="bob", body="Hallo,\r\nab\x00cd", html=html)
    assert error.failure == "invalid_body"
    assert str(error).startswith("the body has the control character U+0000 (NUL) at line 2, column 3;")
    escape = failure_of(plain_spec, acting_user="bob", body="\x1b[31mrot", html=html)
    assert "U+001B (ESC) at line 1, column 1" in str(escape)
    for character, shown in (("\x85", "U+0085 (next line)"), ("\u2028", "U+2028 (line separator)"), ("\f", "U+000C")):
        refused = failure_of(plain_spec, acting_user="bob", body=f"a{character}b", html=html)
        assert f"{shown} at line 1, column 2" in str(refused)  # as in a spec's texts
    kept = plain_text(parsed(make(plain_spec, acting_user="bob", body="Preis:\t5 €\r\nSumme: 5 €")))
    assert kept.startswith("Preis:\t5 €\nSumme: 5 €\n")
    # In HTML an entity may spell one: the text part made from it leaves it out.
    spelled = plain_text(parsed(make(plain_spec, acting_user="bob", body="<p>a&#x1b;[31mb&#1;c</p>", html=True)))
    assert spelled.startswith("a[31mbc\n")


def test_text_nested_deeper_than_the_html_parser_reads_is_kept(plain_spec) -> None:
    """libxml2 stops at 256 levels, and the text there and after it was gone from the text part (and from the
    archive's search): deep levels are read, and kept as text."""
    deep = "<p>Sehr geehrte Kundin,</p>" + "<div>" * 300 + "Ihre Rechnung ist angehängt." + "</div>" * 300
    text = plain_text(parsed(make(plain_spec, acting_user="bob", body=deep + "<p>Gruß</p>", html=True)))
    assert text.startswith("Sehr geehrte Kundin,\n")
    assert "Ihre Rechnung ist angehängt.\n\nGruß\n" in text
    # Deeper than libxml2 reads at all (2048 levels): the document's text alone, scripts left out.
    deeper = deep.replace("<div>" * 300, "<div>" * 3000).replace("</div>" * 300, "</div>" * 3000)
    body = deeper + "<script>var hidden = 1</script><p>Gruß</p>"
    text = plain_text(parsed(make(plain_spec, acting_user="bob", body=body, html=True)))
    assert text.startswith("Sehr geehrte Kundin, Ihre Rechnung ist angehängt. Gruß")
    assert "hidden" not in text


def test_a_table_is_laid_out_unless_its_layout_would_be_huge(plain_spec) -> None:
    """inscriptis pads each cell to its column's width: one wide cell over thousands of rows would come to
    gigabytes of text from a few hundred KB of HTML. Such a table's rows flow instead, a line each."""
    order = "<table><tr><td>Artikel</td><td>Preis</td></tr><tr><td>Tasse</td><td>4,50 €</td></tr></table>"
    laid_out = plain_text(parsed(make(plain_spec, acting_user="bob", body=order, html=True)))
    assert laid_out.startswith("Artikel  Preis\nTasse    4,50 €\n")
    wide = "<table><tr><td>" + "A" * 120_000 + "</td><td>B</td></tr>" + "<tr><td>x</td><td>y</td></tr>" * 12_000
    flowing = plain_text(parsed(make(plain_spec, acting_user="bob", body=wide + "</table>", html=True)))
    assert flowing.startswith("A" * 120_000 + " B\nx y\nx y\n")
    assert len(flowing) < 200_000  # laid out: 12,001 lines of 120,000 characters


def test_without_a_template_cid_images_cannot_be_found(plain_spec) -> None:
    error = failure_of(plain_spec, acting_user="bob", body='<img src="cid:logo.png">', html=True)
    assert error.failure == "file_access" and "html_template" in str(error)


def test_a_missing_template_file_is_a_file_access_error(html_spec) -> None:
    spec, config = html_spec
    (config / "templates" / "mail.html").unlink()
    error = failure_of(html_spec, acting_user="bob")
    assert error.failure == "file_access" and "mail.html" in str(error)


# --- attachments --------------------------------------------------------------------


def test_attachments_keep_name_content_and_guessed_type(plain_spec, tmp_path: Path) -> None:
    pdf = tmp_path / "Rechnung 4711.pdf"
    pdf.write_bytes(b"%PDF-1.7\n" + bytes(range(256)))
    unknown = tmp_path / "data.unknownext"
    unknown.write_bytes(b"\x00\x01")
    composed = make(plain_spec, acting_user="bob", attachments=(pdf, unknown))
    message = parsed(composed)
    assert message.get_content_type() == "multipart/mixed"
    attachments = list(message.iter_attachments())
    assert [(a.get_filename(), a.get_content_type()) for a in attachments] == [
        ("Rechnung 4711.pdf", "application/pdf"),
        ("data.unknownext", "application/octet-stream"),
    ]
    assert attachments[0].get_content() == pdf.read_bytes()
    assert plain_text(message).startswith("Body text\n")
    assert ("attachment", "Rechnung 4711.pdf (application/pdf, 265 bytes)") in composed.explanation


def test_attachments_go_next_to_the_alternative(html_spec, tmp_path: Path) -> None:
    note = tmp_path / "notiz.txt"
    note.write_text("Grüße", encoding="utf-8")
    message = parsed(make(html_spec, acting_user="bob", attachments=(note,)))
    assert [part.get_content_type() for part in message.iter_parts()] == ["multipart/alternative", "text/plain"]
    assert message.get_body(preferencelist=("html",)) is not None
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == "notiz.txt"
    assert attachment.get_payload(decode=True) == "Grüße".encode()


def test_a_missing_attachment_is_a_file_access_error(plain_spec, tmp_path: Path) -> None:
    error = failure_of(plain_spec, acting_user="bob", attachments=(tmp_path / "missing.pdf",))
    assert error.failure == "file_access"
    assert "Could not access file" in str(error) and "missing.pdf" in str(error)


def test_a_fifo_attachment_is_refused_without_blocking(plain_spec, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pdf"
    os.mkfifo(fifo)
    error = failure_of(plain_spec, acting_user="bob", attachments=(fifo,))
    assert error.failure == "file_open"
    assert "File Error: Could not open file" in str(error) and "FIFO" in str(error)


def test_a_directory_attachment_is_refused(plain_spec, tmp_path: Path) -> None:
    error = failure_of(plain_spec, acting_user="bob", attachments=(tmp_path,))
    assert error.failure == "file_open" and "directory" in str(error)


def test_an_oversize_attachment_is_refused(plain_spec, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:  # sparse: 25 MiB + 1 byte without writing them
        handle.truncate(25 * 1024 * 1024 + 1)
    error = failure_of(plain_spec, acting_user="bob", attachments=(big,))
    assert error.failure == "file_open" and "larger than 25 MiB" in str(error)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_attachment_is_refused(plain_spec, tmp_path: Path) -> None:
    secret = tmp_path / "secret.pdf"
    secret.write_bytes(b"x")
    secret.chmod(0)
    error = failure_of(plain_spec, acting_user="bob", attachments=(secret,))
    assert error.failure == "file_open"


def test_an_attachment_name_with_a_line_break_is_refused(plain_spec, tmp_path: Path) -> None:
    odd = tmp_path / "a\nX-Injected: 1.pdf"
    odd.write_bytes(b"x")
    error = failure_of(plain_spec, acting_user="bob", attachments=(odd,))
    assert error.failure == "invalid_header"


# --- headers ------------------------------------------------------------------------


def test_headers_are_complete(plain_spec) -> None:
    composed = make(plain_spec, acting_user="bob", subject="Order 4711")
    message = parsed(composed)
    assert message["Subject"] == "Order 4711"
    assert message["Date"].datetime == NOW
    assert message["Message-ID"] == composed.message_id
    assert re.fullmatch(r"<[^@<>]+@example\.com>", composed.message_id)
    assert message["X-Mailer"] == "mailops"
    assert message["From"] == "Example GmbH <a@example.com>"


def test_non_ascii_subject_and_sender_name_round_trip(plain_spec) -> None:
    subject = "Grüße – Bestellung Nr. 4711 ✓"
    composed = make(plain_spec, project="SHOP", acting_user="bob", subject=subject, body="Schöne Grüße")
    raw = composed.message.as_bytes(policy=SMTP)
    assert raw.isascii()  # encoded words and quoted-printable: no server needs SMTPUTF8 or 8BITMIME
    message = email.message_from_bytes(raw, policy=default)
    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == "Müller & Söhne"
    assert plain_text(message).startswith("Schöne Grüße\n")


@pytest.mark.parametrize(
    "subject", ["Hello\r\nBcc: victim@example.org", "Hello\nX-Injected: 1", "bell\x07", "esc\x1b[2J", "sep\u2028x"]
)
def test_a_subject_with_control_characters_is_refused(plain_spec, subject: str) -> None:
    error = failure_of(plain_spec, acting_user="bob", subject=subject)
    assert error.failure == "invalid_header"
    assert "subject" in str(error) and "\n" not in str(error) and "\r" not in str(error)


def test_a_sender_name_with_control_characters_is_refused(plain_spec) -> None:
    spec, config = plain_spec
    # The loader refuses such a name; a spec built otherwise is checked again here.
    bad = spec.model_copy(update={"defaults": spec.defaults.model_copy(update={"sender_name": "Evil\r\nBcc: x@y.z"})})
    with pytest.raises(ComposeError) as caught:
        compose(bad, request(acting_user="bob"), config_dir=config, now=NOW)
    assert caught.value.failure == "invalid_header" and "sender name" in str(caught.value)


def test_a_crlf_text_body_is_sent_with_normal_line_breaks(plain_spec) -> None:
    composed = make(plain_spec, acting_user="bob", body="one\r\ntwo\rthree")
    assert plain_text(parsed(composed)).startswith("one\ntwo\nthree\n\nKind regards")


def test_the_preview_is_the_first_200_characters_of_the_text(plain_spec) -> None:
    composed = make(plain_spec, acting_user="bob", body="x" * 500)
    assert composed.preview == "x" * 200


# --- the shipped example ------------------------------------------------------------


def test_the_shipped_example_composes_a_complete_mail(example_config: Path) -> None:
    spec = load_spec(example_config).spec
    composed = compose(
        spec,
        SendRequest(
            to=("kunde@example.org",),
            subject="Ihre Bestellung",
            body="Guten Tag,\nIhre Bestellung ist unterwegs.",
            project="AMAZON",
            acting_user="bob",
        ),
        config_dir=example_config,
        now=NOW,
    )
    message = parsed(composed)
    assert composed.sender == "info@web.de"
    assert message["From"].addresses[0].display_name == "Example on Amazon"
    assert composed.cc == ("office@example.com",) and composed.bcc == ("archive@example.com",)
    text = plain_text(message)
    assert text == (
        "Guten Tag,\nIhre Bestellung ist unterwegs.\n\nKind regards\nBob Schulz\n\n"
        "Bob Schulz\nTel. +49 30 7654321\nExample GmbH · Musterstraße 1 · 10115 Berlin\n"
    )
    assert composed.explanation == (
        ("account", "project AMAZON links info@web.de"),
        ("sender name", "from the link of project AMAZON"),
        ("cc", "office@example.com from the defaults"),
        ("bcc", "archive@example.com from the defaults"),
        ("greeting", "from the defaults, for employee bob"),
        ("signature", "from the defaults, for employee bob"),
        ("signature", "line `Mobil {MITARBEITER_MOBIL}` dropped: employee bob has no mobile"),
        ("signature", "line `Fax {MITARBEITER_TELEFAX}` dropped: employee bob has no fax"),
        ("template", "templates/mail.html"),
        ("text part", "generated from the HTML by inscriptis"),
    )


def test_the_shipped_example_sends_a_project_through_its_own_account(example_config: Path) -> None:
    spec = load_spec(example_config).spec
    composed = compose(
        spec,
        SendRequest(
            to=("kunde@example.org",),
            cc=("support@example.com",),
            subject="Hi",
            body="Hi",
            project="SHOP",
            acting_user="alice",
        ),
        config_dir=example_config,
        now=NOW,
    )
    assert composed.sender == "support@example.com"
    assert composed.recipients == ("kunde@example.org", "office@example.com", "archive@example.com")
    assert ("removed", "support@example.com: the sender gets no copy of its own") in composed.explanation
    assert ("signature", "the account's own, for employee alice") in composed.explanation
    assert "Alice Meyer\n+49 30 1234567\n" in plain_text(parsed(composed))


def test_an_attachment_that_cannot_be_opened_is_refused_even_for_root(plain_spec, tmp_path: Path) -> None:
    loop = tmp_path / "loop.pdf"
    loop.symlink_to(loop)  # opening it fails with "Too many levels of symbolic links"
    error = failure_of(plain_spec, acting_user="bob", attachments=(loop,))
    assert error.failure == "file_open" and "File Error: Could not open file" in str(error)


def test_a_template_without_the_content_placeholder_is_refused(html_spec) -> None:
    spec, config = html_spec
    (config / "templates" / "mail.html").write_text("<html><body>no place</body></html>", encoding="utf-8")
    error = failure_of(html_spec, acting_user="bob")
    assert error.failure == "file_open" and "{CONTENT}" in str(error)


def test_a_failure_after_the_sender_is_decided_names_the_account(plain_spec, tmp_path: Path) -> None:
    error = failure_of(plain_spec, project="SHOP", acting_user="bob", attachments=(tmp_path / "missing.pdf",))
    assert error.account is not None and error.account.address == "shop@example.com"
    assert failure_of(plain_spec, project="NOPE").account is None
