"""The outbox error classifier (mailops/outbox/classify.py, classes.yaml) and the seed log reader."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from benchmarks.outbox_classify import classify_rows, generate
from mailops.errors import MailopsError
from mailops.outbox import classify as module
from mailops.outbox.classify import (
    CLASSES,
    ClassTableError,
    OutboxLogError,
    Remedy,
    classify,
    classify_frame,
    extract_codes,
    is_temporary,
    load_table,
    read_located_seed_log,
    read_seed_log,
    remedy,
    temporary,
)
from mailops.transport.failures import FailureClass

# The twelve messages of the seed's help article, as PHPMailer writes them.
SEED_MESSAGES = [
    ("You must provide at least one recipient email address.", "no_recipient"),
    ("Mailer is not supported.", "mailer_not_supported"),
    ("Could not instantiate mail function.", "mail_function"),
    ("SMTP Error: Could not authenticate.", "could_not_authenticate"),
    (
        "The following From address failed: shop@example.com : MAIL FROM command failed,Sender address rejected: "
        "not owned by user,553,5.1.8",
        "from_failed",
    ),
    (
        "SMTP Error: The following recipients failed: kunde@example.org: 550 5.1.1 <kunde@example.org>: Recipient "
        "address rejected: User unknown",
        "recipients_failed",
    ),
    (
        "SMTP Error: data not accepted.SMTP server error: DATA END command failed Detail: Message rejected as spam "
        "SMTP code: 554 Additional SMTP info: 5.7.1",
        "policy_rejection",  # the server's 5.7.1 is finer than "data not accepted"
    ),
    ("SMTP Error: data not accepted.", "data_not_accepted"),
    ("SMTP Error: Could not connect to SMTP host. Failed to connect to server", "could_not_connect"),
    ("Could not access file: /var/www/userdata/dms/123", "file_access"),
    ("File Error: Could not open file: /tmp/x.pdf", "file_open"),
    ("Unknown encoding: 8bitx", "unknown_encoding"),
    ("Signing Error: Unable to sign", "signing_error"),
]

# Realistic variants: addresses and the server's reply inside, as PHPMailer's setError() appends it.
VARIANTS = [
    (
        "SMTP Error: The following recipients failed: m.mueller@beispiel.de: <m.mueller@beispiel.de>: Recipient "
        "address rejected: User unknown in virtual mailbox tableSMTP server error: RCPT TO command failed Detail: "
        "<m.mueller@beispiel.de>: Recipient address rejected: User unknown in virtual mailbox table SMTP code: 550 "
        "Additional SMTP info: 5.1.1",
        "recipients_failed",
        550,
        "5.1.1",
    ),
    (
        "SMTP Error: The following recipients failed: info@kunde-gmbh.de: 550 Requested action not taken: mailbox "
        "unavailable",
        "recipients_failed",
        550,
        None,
    ),
    (
        "SMTP Error: Could not authenticate.SMTP server error: AUTH command failed Detail: Authentication failed "
        "SMTP code: 535 Additional SMTP info: 5.7.8",
        "could_not_authenticate",
        535,
        "5.7.8",
    ),
    (
        "The following From address failed: rechnung@shop.example : MAIL FROM command failed,Sender address "
        "rejected: not owned by user rechnung@shop.example,553,",
        "from_failed",
        553,
        None,
    ),
    (
        "SMTP Error: Could not connect to SMTP host. Connection failed. stream_socket_client(): Unable to connect to "
        "ssl://smtp.example.com:465 (Connection refused)",
        "could_not_connect",
        None,  # the port is no reply code
        None,
    ),
    (
        "SMTP connect() failed. https://github.com/PHPMailer/PHPMailer/wiki/Troubleshooting",
        "could_not_connect",
        None,
        None,
    ),
    (
        "Could not access file: /var/www/userdata/dms/anna.schmidt@example.org/Rechnung_4711.pdf",
        "file_access",
        None,
        None,
    ),
    ("smtpx mailer is not supported.", "mailer_not_supported", None, None),
    ("You must provide at least one recipient‘s email address", "no_recipient", None, None),  # as the article spells it
    # PHPMailer in German, as a German installation may log it
    ("SMTP-Fehler: Authentifizierung fehlgeschlagen.", "could_not_authenticate", None, None),
    ("SMTP-Fehler: Die folgenden Empfänger sind nicht korrekt: a@b.de", "recipients_failed", None, None),
    ("SMTP-Fehler: Konnte keine Verbindung zum SMTP-Host herstellen.", "could_not_connect", None, None),
    ("Dateifehler: Konnte folgende Datei nicht öffnen: /tmp/x.pdf", "file_open", None, None),
    ("Bitte geben Sie mindestens eine Empfängeradresse an.", "no_recipient", None, None),
]

FINER = [
    # tls
    (
        "SMTP Error: Could not connect to SMTP host. Connection failed. stream_socket_enable_crypto(): SSL operation "
        "failed with code 1. OpenSSL Error messages: error:0A000086:SSL routines::certificate verify failed",
        "tls",
    ),
    ("SMTP Error: Could not connect to SMTP host. STARTTLS not supported by server", "tls"),
    # timeout
    (
        "SMTP Error: Could not connect to SMTP host. Connection failed. stream_socket_client(): Unable to connect to "
        "ssl://smtp.example.com:465 (Connection timed out)",
        "timeout",
    ),
    ("SMTP Error: data not accepted. SMTP server error: DATA END command failed Detail: timeout", "timeout"),
    # throttled
    (
        "SMTP Error: The following recipients failed: a@b.de: 421 4.7.0 Try again later, closing connection.",
        "throttled",
    ),
    ("SMTP Error: The following recipients failed: a@b.de: 451 4.7.1 Greylisted, come back later", "throttled"),
    ("SMTP Error: The following recipients failed: a@b.de: 450 Requested mail action not taken", "throttled"),
    (
        "SMTP Error: data not accepted. SMTP code: 550 Additional SMTP info: 5.4.5 Daily user sending limit exceeded",
        "throttled",
    ),
    ("SMTP Error: Could not authenticate. 454 4.7.0 Too many login attempts, please try again later.", "throttled"),
    # connection_lost
    ("Unexpected EOF received", "connection_lost"),
    ("SMTP Error: data not accepted. SMTP server error: Connection reset by peer", "connection_lost"),
    # interrupted (mailops' own record of a process that died mid-send)
    ("the sending process ended before this attempt was recorded; it may have been delivered", "interrupted"),
    # mailbox_full
    ("SMTP Error: The following recipients failed: a@b.de: 552 5.2.2 Mailbox size limit exceeded", "mailbox_full"),
    ("SMTP Error: The following recipients failed: a@b.de: 550 The email account is over quota", "mailbox_full"),
    # message_too_large
    ("SMTP Error: data not accepted. SMTP code: 552 Additional SMTP info: 5.3.4", "message_too_large"),
    ("SMTP Error: data not accepted. 552 Message size exceeds fixed maximum message size", "message_too_large"),
    # policy_rejection
    (
        "SMTP Error: The following recipients failed: a@b.de: 550 5.7.1 Service unavailable; Client host "
        "[203.0.113.7] blocked using zen.spamhaus.org",
        "policy_rejection",
    ),
    ("SMTP Error: data not accepted. 550 Message rejected due to local policy", "policy_rejection"),
    ("SMTP Error: data not accepted. 554 Your IP is listed at bl.spamcop.net", "policy_rejection"),
    # smtp_auth_disabled
    (
        "SMTP Error: Could not authenticate.SMTP server error: AUTH command failed Detail: 5.7.139 Authentication "
        "unsuccessful, SmtpClientAuthentication is disabled for the Tenant. SMTP code: 535",
        "smtp_auth_disabled",
    ),
    # from_failed: the login may not send as this address, whatever the code says otherwise
    ("553 5.7.1 <shop@example.org>: Sender address rejected: not owned by user info@example.org", "from_failed"),
    (
        "554 5.2.252 SendAsDenied; shop@contoso.com not allowed to send as info@contoso.com; "
        "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied",
        "from_failed",
    ),
    (
        "The following From address failed: info@example.de : MAIL FROM command failed,Sender address rejected: "
        "not owned by user,553,5.7.1",
        "from_failed",
    ),
    # relay_denied: not a blocklist, though it comes as 5.7.1
    ("554 5.7.1 <kunde@example.net>: Relay access denied", "relay_denied"),
    ("SMTP Error: The following recipients failed: kunde@example.net: Relay access denied", "relay_denied"),
    ("550 relay not permitted", "relay_denied"),
    ("421 4.4.2 Connection dropped due to ConnectionReset", "connection_lost"),
    # unknown
    ("Invalid address:  (to): kunde@example", "unknown"),
    ("SMTP Error: something nobody has seen before", "unknown"),
]

PRECEDENCE = [
    # The brief's cases: a finer class wins over the coarse PHPMailer message carrying it.
    ("SMTP Error: The following recipients failed: a@b.de: 552 5.3.4 Message too large", "message_too_large"),
    (
        "SMTP Error: data not accepted.SMTP server error: DATA END command failed Detail: spam SMTP code: 554 "
        "Additional SMTP info: 5.7.1",
        "policy_rejection",
    ),
    ("SMTP Error: The following recipients failed: a@b.de: 452 4.2.2 mailbox full", "mailbox_full"),
    ("SMTP Error: Could not authenticate. 535 5.7.139 Authentication unsuccessful", "smtp_auth_disabled"),
    # A full mailbox's 452 is not throttling, and its 552 is not a large message.
    ("SMTP Error: The following recipients failed: a@b.de: 452 4.2.2 over quota", "mailbox_full"),
    ("SMTP Error: The following recipients failed: a@b.de: 552 5.2.2 mailbox size limit", "mailbox_full"),
    # 5.7.139 is not 5.7.1
    ("535 5.7.139 Authentication unsuccessful", "smtp_auth_disabled"),
    # A local error's file name is no server reply.
    ("Could not access file: /tmp/too large timeout 552 5.3.4.pdf", "file_access"),
    ("File Error: Could not open file: /srv/spamhaus-blocked.pdf", "file_open"),
    ("Signing Error: certificate has expired", "signing_error"),
]


def one(error: object, **columns: object) -> object:
    """classify_frame's answer for one row."""
    return classify_frame(pd.DataFrame({"error": [error], **{k: [v] for k, v in columns.items()}})).iloc[0]


@pytest.mark.parametrize(("text", "expected"), SEED_MESSAGES)
def test_the_seeds_messages(text: str, expected: str) -> None:
    assert classify(text) == expected
    assert one(text) == expected


@pytest.mark.parametrize(("text", "expected", "code", "enhanced"), VARIANTS)
def test_realistic_variants_and_their_codes(text: str, expected: str, code: int | None, enhanced: str | None) -> None:
    assert classify(text) == expected
    codes = extract_codes(pd.Series([text]))
    assert (None if pd.isna(codes["smtp_code"].iloc[0]) else codes["smtp_code"].iloc[0]) == code
    assert (None if pd.isna(codes["enhanced_code"].iloc[0]) else codes["enhanced_code"].iloc[0]) == enhanced


@pytest.mark.parametrize(("text", "expected"), FINER + PRECEDENCE)
def test_finer_classes_and_precedence(text: str, expected: str) -> None:
    assert classify(text) == expected


def test_the_frame_is_classified_in_one_go_as_a_categorical_over_the_classes() -> None:
    cases = SEED_MESSAGES + [(text, expected) for text, expected, _, _ in VARIANTS] + FINER + PRECEDENCE
    frame = pd.DataFrame({"error": [text for text, _ in cases]}, index=[f"row{n}" for n in range(len(cases))])
    result = classify_frame(frame)
    assert isinstance(result.dtype, pd.CategoricalDtype)
    assert list(result.cat.categories) == list(CLASSES)
    assert list(result.index) == list(frame.index)
    assert result.tolist() == [expected for _, expected in cases]


def test_the_class_list_order_and_remedies() -> None:
    assert CLASSES[-1] == "unknown"
    assert len(CLASSES) == 23 and len(set(CLASSES)) == 23
    for name in CLASSES:
        help = remedy(name)
        assert isinstance(help, Remedy)
        assert "\n" not in help.short and len(help.short) <= 90
        assert len(help.long) > len(help.short)
    assert {name for name in CLASSES if remedy(name).temporary} == {
        "throttled",
        "timeout",
        "could_not_connect",
        "connection_lost",
        "interrupted",
    }
    assert "server's text" in remedy("unknown").short
    with pytest.raises(ValueError, match="no outbox error class 'nonsense'"):
        remedy("nonsense")
    with pytest.raises(AttributeError):
        remedy("tls").short = "x"  # type: ignore[misc]


def test_temporary_is_the_reply_code_first_then_the_class() -> None:
    assert is_temporary("throttled") and is_temporary("could_not_connect")
    # A 5xx is final even in a class that is usually passing (a daily limit says 550 5.4.5).
    assert not is_temporary("throttled", 550, "5.4.5") and not is_temporary("throttled", None, "5.4.5")
    assert not is_temporary("timeout", 553, "5.7.0")
    assert is_temporary("throttled", 451, "5.7.1")  # the reply code outranks the enhanced code
    assert not is_temporary("mailbox_full", 552, "5.2.2")
    assert is_temporary("mailbox_full", 452, "4.2.2")
    assert is_temporary("unknown", 451)
    assert is_temporary("unknown", None, "4.4.1")
    assert not is_temporary("recipients_failed", 550, "5.1.1")
    with pytest.raises(ValueError):
        is_temporary("nonsense")
    frame = pd.DataFrame(
        {
            "class": ["tls", "unknown", None, "recipients_failed", "throttled", "connection_lost"],
            "smtp_code": [None, 421, 450, 550, 554, None],
            "enhanced_code": [None, None, None, "5.1.1", None, None],
        }
    )
    assert temporary(frame).tolist() == [False, True, False, False, False, True]


# --- missing values ---------------------------------------------------------------------------


@pytest.mark.parametrize("blank", [None, math.nan, pd.NA, "", "   ", "\t\r\n"])
def test_a_sent_mail_has_no_class(blank: object) -> None:
    assert pd.isna(one(blank))
    with pytest.raises(ValueError, match="nothing to classify"):
        classify(blank)  # type: ignore[arg-type]


def test_na_rows_in_a_frame_and_an_empty_frame() -> None:
    frame = pd.DataFrame({"error": [None, "SMTP Error: data not accepted.", "", None]})
    result = classify_frame(frame)
    assert result.isna().tolist() == [True, False, True, True]
    assert classify_frame(pd.DataFrame({"error": pd.Series([], dtype="str")})).empty
    assert classify_frame(pd.DataFrame({"error": [None, None]})).isna().all()
    with pytest.raises(ValueError, match="no `error` column"):
        classify_frame(pd.DataFrame({"Fehler": ["x"]}))


# --- given codes and the transport's hint -------------------------------------------------------


def test_codes_given_in_columns_are_used_and_missing_ones_come_from_the_text() -> None:
    assert classify("Message refused", smtp_code=421) == "throttled"
    assert classify("Message refused", enhanced_code="5.7.1") == "policy_rejection"
    assert classify("Message refused", enhanced_code=" 5.3.4 ") == "message_too_large"
    assert classify("Message refused", smtp_code=552) == "unknown"  # 552 needs a word about size
    assert classify("Message size refused", smtp_code=552) == "message_too_large"
    # given codes win over the text's
    assert classify("a@b.de: 550 5.1.1 unknown user", smtp_code=452, enhanced_code="4.2.2") == "mailbox_full"
    # a code that is none is ignored, and then the text's is taken
    assert classify("a@b.de: 550 5.7.1 denied", smtp_code=999, enhanced_code="x.y.z") == "policy_rejection"
    frame = pd.DataFrame(
        {
            "error": ["SMTP code: 421 busy", "nothing", "a@b.de: 452 4.2.2 over"],
            "smtp_code": pd.array([None, 421, None], dtype="Int64"),
            "enhanced_code": [None, None, None],
        }
    )
    assert classify_frame(frame).tolist() == ["throttled", "throttled", "mailbox_full"]


@pytest.mark.parametrize(
    ("error", "failure", "expected"),
    [
        # the text says nothing: the hint decides
        ("[Errno 111] Connect call failed", "connect", "could_not_connect"),
        ("535 5.7.8 Username and Password not accepted", "auth", "could_not_authenticate"),
        ("kunde@example.org: 550 5.1.1 no such user", "recipient_refused", "recipients_failed"),
        ("553 sender rejected", "sender_refused", "from_failed"),
        ("554 refused", "data_refused", "data_not_accepted"),
        ("environment variable SHOP_PASSWORD is not set", "secret", "could_not_authenticate"),
        ("invalid_grant: AADSTS70000", "token", "could_not_authenticate"),
        ("whatever", "tls", "tls"),
        ("whatever", "timeout", "timeout"),
        ("whatever", "smtp_auth_disabled", "smtp_auth_disabled"),
        # a hint without a class of its own leaves it to the text
        ("SMTP Error: data not accepted.", "protocol", "data_not_accepted"),
        ("whatever", "protocol", "unknown"),
        ("whatever", "not_delivered", "unknown"),
        ("whatever", "local", "unknown"),
        # a finer text wins over the hint, the hint over a coarse text
        ("kunde@example.org: 552 5.2.2 mailbox full", "recipient_refused", "mailbox_full"),
        ("554 5.7.1 rejected as spam", "data_refused", "policy_rejection"),
        ("SMTP Error: Could not connect to SMTP host.", "timeout", "timeout"),
        ("SMTP Error: Could not authenticate.", "smtp_auth_disabled", "smtp_auth_disabled"),
        # a local error stays what it is
        ("Could not access file: /tmp/a.pdf", "connect", "file_access"),
        # no text: the hint alone
        (None, "timeout", "timeout"),
        ("", "protocol", "unknown"),
    ],
)
def test_the_transports_failure_hint(error: str | None, failure: str, expected: str) -> None:
    assert classify(error, failure=failure) == expected
    assert classify(error, failure=FailureClass(failure)) == expected
    assert one(error, failure=failure) == expected


def test_every_failure_hint_is_known_and_a_wrong_one_is_refused() -> None:
    for failure in FailureClass:
        assert classify("x", failure=failure.value) in CLASSES
    with pytest.raises(ValueError, match="unknown failure hint"):
        classify("x", failure="bogus")
    with pytest.raises(ValueError, match="unknown failure hint"):
        classify_frame(pd.DataFrame({"error": ["x", "y"], "failure": [None, "AUTH"]}))


# --- classify() is classify_frame() on one row ---------------------------------------------------

TEMPLATES = [text for text, _ in SEED_MESSAGES + FINER + PRECEDENCE] + [text for text, *_ in VARIANTS]
ADDRESS = st.builds(
    "{}{}@{}".format,
    st.sampled_from(["kunde", "info", "m.mueller", "anna.schmidt", "x"]),
    st.integers(0, 10**9),
    st.sampled_from(["example.org", "beispiel.de", "kunde-gmbh.de"]),
)
REPLY = st.sampled_from(
    [
        "",
        " 550 5.1.1 <{a}>: unknown user",
        " SMTP code: 452 Additional SMTP info: 4.2.2",
        ",553,5.1.8",
        " {a}: 552 5.3.4 Message too large",
        " 421 4.7.0 Try again later",
        " 535 5.7.139 Authentication unsuccessful",
        " 554 5.7.1 listed at zen.spamhaus.org",
        " (Connection timed out)",
        " ssl://smtp.example.com:465",
    ]
)


@st.composite
def error_texts(draw: st.DrawFn) -> str | None:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from([None, "", "  "]))
    if kind == 1:
        return draw(st.text(max_size=60))
    address = draw(ADDRESS)
    template = draw(st.sampled_from(TEMPLATES)).replace("a@b.de", address).replace("kunde@example.org", address)
    text = template + draw(REPLY).format(a=address)
    if kind == 2:  # the same text in another case
        text = text.upper() if draw(st.booleans()) else text.lower()
    return text


ROWS = st.lists(
    st.tuples(
        error_texts(),
        st.one_of(st.none(), st.sampled_from([250, 421, 450, 452, 535, 550, 552, 554])),
        st.one_of(st.none(), st.sampled_from(["5.1.1", "4.2.2", "5.2.2", "5.3.4", "5.7.1", "5.7.139", "4.7.0"])),
        st.one_of(st.none(), st.sampled_from([failure.value for failure in FailureClass])),
    ),
    min_size=1,
    max_size=5,
)

# A classification costs a pandas frame's fixed overhead (about 20 ms here, mostly per pattern, not per row):
# these properties take a fifth of the profile's examples, and the second many rows per example.
FEWER = settings(max_examples=max(20, settings().max_examples // 5))


@FEWER
@given(ROWS)
def test_classify_is_classify_frame_on_one_row(rows: list[tuple[Any, ...]]) -> None:
    frame = pd.DataFrame(
        {
            "error": [row[0] for row in rows],
            "smtp_code": pd.array([row[1] for row in rows], dtype="Int64"),
            "enhanced_code": [row[2] for row in rows],
            "failure": [row[3] for row in rows],
        }
    )
    result = classify_frame(frame)
    for (error, smtp_code, enhanced_code, failure), expected in zip(rows, result, strict=True):
        if pd.isna(expected):
            with pytest.raises(ValueError):
                classify(error, smtp_code, enhanced_code, failure)
        else:
            assert classify(error, smtp_code, enhanced_code, failure) == expected


@FEWER
@given(st.lists(error_texts(), min_size=1, max_size=100))
def test_re2_and_python_re_agree(texts: list[str | None]) -> None:
    """The vectorised path (RE2) gives what the same patterns give in Python's `re`, row by row."""
    errors = pd.Series(texts, dtype="str")
    assert classify_frame(pd.DataFrame({"error": errors})).equals(classify_rows(errors))


def test_the_benchmarks_log_is_classified_alike_by_both_paths() -> None:
    frame = generate(5000, seed=7)
    vectorised = classify_frame(frame)
    assert vectorised.equals(classify_rows(frame["error"]))
    assert vectorised.notna().sum() == frame["error"].notna().sum()
    assert set(vectorised.dropna()) >= {"recipients_failed", "policy_rejection", "file_access", "tls", "unknown"}


# --- the class table ------------------------------------------------------------------------------


def _raw_table() -> Any:
    text = (Path(module.__file__).parent / "classes.yaml").read_text(encoding="utf-8")
    return YAML(typ="safe").load(text)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw["classes"]["tls"].update(text=r"\bssl\b"), "may escape only punctuation"),
        (lambda raw: raw["classes"]["tls"].update(text=r"ssl(?=v3)"), "may group only"),
        (lambda raw: raw["classes"]["tls"].update(text=r"(ssl)"), "may group only"),
        (lambda raw: raw["classes"]["tls"].update(text=r"ssl$"), "anchors"),
        (lambda raw: raw["classes"]["tls"].update(text=r"[ssl"), "unclosed"),
        (lambda raw: raw["classes"]["tls"].update(text=r"ssl{2,1}"), "not a regular expression"),
        (lambda raw: raw["classes"]["tls"].update(short="x" * 91), "at most 90"),
        (lambda raw: raw["classes"]["tls"].update(temporary="yes"), "true or false"),
        (lambda raw: raw["classes"]["tls"].update(failures=["tsl"]), "FailureClass"),
        (lambda raw: raw["classes"]["timeout"].update(failures=["tls"]), "already means tls"),
        (lambda raw: raw["classes"]["tls"].update(colour="red"), "unknown keys"),
        (lambda raw: raw["classes"]["tls"].pop("text"), "needs a rule"),
        (lambda raw: raw["classes"]["unknown"].update(text="x"), "needs a rule"),
        (lambda raw: raw["precedence"].remove("failure_hint"), "exactly once"),
        (lambda raw: raw["precedence"].remove("tls"), "differ"),
        (lambda raw: raw["precedence"].append(raw["precedence"].pop(0)), "must come last"),
    ],
)
def test_a_malformed_class_table_is_refused(change: Any, message: str) -> None:
    raw = copy.deepcopy(_raw_table())
    change(raw)
    with pytest.raises(ClassTableError, match=message):
        load_table(raw)


def test_the_shipped_table_loads_and_its_precedence_is_as_documented() -> None:
    table = load_table(_raw_table())
    order = [stage.name if stage else "failure_hint" for stage in table.stages]
    assert order.index("signing_error") < order.index("smtp_auth_disabled")  # local errors first
    assert order.index("throttled") < order.index("failure_hint") < order.index("could_not_authenticate")
    assert order.index("mailbox_full") < order.index("message_too_large") < order.index("throttled")


# --- reading the seed's exported log --------------------------------------------------------------

GERMAN_LOG = (
    "\ufeffDatum;From;To;CC;BCC;Subject;Fehler;Projekt\n"
    "05.03.2024 14:22;shop@example.com;kunde@example.org;;;Rechnung 4711;;SHOP\n"
    '15.07.2024 10:00;shop@example.com;m.mueller@beispiel.de;chef@beispiel.de;;"Angebot; neu";'
    '"SMTP Error: The following recipients failed: m.mueller@beispiel.de: 550 5.1.1 <m.mueller@beispiel.de>: '
    'User unknown";SHOP\n'
    '27.10.2024 02:30:15;shop@example.com;a@b.de;;archiv@example.com;"Zwei\nZeilen";'
    '"The following From address failed: shop@example.com : MAIL FROM command failed,not owned by user,553,5.1.8";\n'
    "01.01.2025;shop@example.com;;;;Ohne Empfänger;You must provide at least one recipient email address.;\n"
)

ENGLISH_LOG = (
    "date,from,to,cc,bcc,subject,error\n"
    "2024-03-05T14:22:00Z,shop@example.com,kunde@example.org,,,Invoice,\n"
    '2024-03-05 15:00,shop@example.com,x@example.org,,,Hello,"SMTP Error: data not accepted.SMTP server error: '
    'DATA END command failed Detail: Message rejected as spam SMTP code: 554 Additional SMTP info: 5.7.1"\n'
    "2024-03-05T16:00:00+02:00,shop@example.com,y@example.org,,,Hi,SMTP Error: Could not authenticate.\n"
)


def test_read_seed_log_with_bom_semicolons_and_german_dates(tmp_path: Path) -> None:
    path = tmp_path / "mailausgang.csv"
    path.write_text(GERMAN_LOG, encoding="utf-8")
    log = read_seed_log(path)
    assert list(log.columns) == [
        "time", "from", "to", "cc", "bcc", "subject", "error", "smtp_code", "enhanced_code", "status", "class",
    ]  # fmt: skip
    assert str(log["time"].dt.tz) == "UTC"
    assert log["time"].tolist() == [
        pd.Timestamp("2024-03-05 13:22", tz="UTC"),  # CET
        pd.Timestamp("2024-07-15 08:00", tz="UTC"),  # CEST
        pd.Timestamp("2024-10-27 00:30:15", tz="UTC"),  # the repeated hour: the earlier one
        pd.Timestamp("2024-12-31 23:00", tz="UTC"),
    ]
    assert log["status"].tolist() == ["sent", "failed", "failed", "failed"]
    assert log["class"].tolist()[1:] == ["recipients_failed", "from_failed", "no_recipient"]
    assert pd.isna(log["class"].iloc[0]) and pd.isna(log["error"].iloc[0])
    assert log["smtp_code"].tolist()[1:3] == [550, 553] and pd.isna(log["smtp_code"].iloc[3])
    assert log["enhanced_code"].tolist()[1:3] == ["5.1.1", "5.1.8"]
    assert log["subject"].tolist()[1:3] == ["Angebot; neu", "Zwei\nZeilen"]
    assert log["cc"].tolist()[1] == "chef@beispiel.de" and pd.isna(log["cc"].iloc[0])
    assert pd.isna(log["to"].iloc[3])
    assert "Projekt" not in log.columns
    assert log["class"].equals(classify_frame(log[["error"]]))


def test_read_seed_log_with_commas_english_names_and_iso_dates(tmp_path: Path) -> None:
    path = tmp_path / "outbox.csv"
    path.write_text(ENGLISH_LOG, encoding="utf-8")
    log = read_seed_log(path, timezone="UTC")
    assert log["time"].tolist() == [
        pd.Timestamp("2024-03-05 14:22", tz="UTC"),
        pd.Timestamp("2024-03-05 15:00", tz="UTC"),
        pd.Timestamp("2024-03-05 14:00", tz="UTC"),
    ]
    assert log["class"].tolist()[1:] == ["policy_rejection", "could_not_authenticate"]
    assert log["smtp_code"].tolist()[1] == 554 and log["enhanced_code"].tolist()[1] == "5.7.1"
    assert log["status"].tolist() == ["sent", "failed", "failed"]


def test_read_seed_log_needs_only_the_error_column(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("Foo; FEHLER \n1;Unknown encoding: x\n2;\n", encoding="utf-8")
    log = read_seed_log(path)
    assert log["class"].tolist()[0] == "unknown_encoding" and pd.isna(log["class"].iloc[1])
    assert log["time"].isna().all() and log["to"].isna().all()


def test_read_seed_log_takes_old_line_ends_nanoseconds_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_bytes(b"Datum;Subject;Fehler\r01.01.2026;s;x\r\r  \r;;\r02.01.2026;t;550 5.1.1 unknown\r")
    log = read_located_seed_log(path)
    assert log.frame["subject"].tolist() == ["s", "t"] and log.lines.tolist() == [2, 6]
    path.write_text("Datum;Fehler\n2026-11-03T09:15:00.123456789Z;x\n2026-11-03T09:15:00.5;y\n", encoding="utf-8")
    log = read_located_seed_log(path, timezone="UTC")
    assert log.frame["time"].tolist() == [
        pd.Timestamp("2026-11-03 09:15:00.123456", tz="UTC"),
        pd.Timestamp("2026-11-03 09:15:00.5", tz="UTC"),
    ]
    assert log.has_offset.tolist() == [True, False]


def test_read_seed_log_reads_quotes_and_line_ends_as_exports_write_them(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        'Datum;From;To;Subject;Fehler\n01.01.2026;"Anna, B" <a@example.com>;k@example.org;Hallo;;\n'
        "02.01.2026;b@example.com;k@example.org;Zwei;550 5.1.1 unknown;;\n",
        encoding="utf-8",
    )
    log = read_seed_log(path)
    assert log["from"].tolist() == ["Anna, B <a@example.com>", "b@example.com"]
    assert log["subject"].tolist() == ["Hallo", "Zwei"] and log["status"].tolist() == ["sent", "failed"]


def test_read_seed_log_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    def refusal(content: bytes | None, name: str = "log.csv", **options: Any) -> str:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(OutboxLogError) as caught:
            read_seed_log(path, **options)
        assert isinstance(caught.value, MailopsError)
        message = str(caught.value)
        assert str(path) in message
        return message

    latin1 = "Datum;Fehler\n01.02.2024 10:00;Empfänger unbekannt\n".encode("latin-1")
    assert ":2:" in refusal(latin1) and "not valid UTF-8" in refusal(latin1)
    assert "no `Fehler` (or `error`) column" in refusal(b"Datum;To;Subject\n01.02.2024;a@b.de;x\n")
    assert "both" in refusal(b"Fehler;error\nx;y\n")
    assert "no header line" in refusal(b"")
    assert "is not a date" in refusal(b"Datum;Fehler\n31.02.2024 10:00;x\n")
    assert refusal(b"Datum;Fehler\n01.02.2024 10:00;x\nyesterday;y\n").endswith(
        "log.csv:3: Datum `yesterday` is not a date and time (dd.mm.yyyy HH:MM, dd.mm.yyyy or ISO 8601)"
    )
    # Located by the line the row starts on, after a quoted field over two lines and blank lines.
    multiline = b'Datum;Subject;Fehler\n01.01.2026;"two\nlines";x\n\n\n02.01.2026;s;y\nxx.01.2026;s;z\n'
    assert "log.csv:7: Datum `xx.01.2026` is not a date" in refusal(multiline)
    for word in (b"now", b"today"):  # words pandas reads as the time of the import
        assert "is not a date and time" in refusal(b"Datum;Fehler\n" + word + b";x\n")
    # Years near the ends of what a time can hold, before or after the zone is applied.
    assert "log.csv:2: Datum `01.01.0001 00:00` is not within the years 1900 to 2199" in refusal(
        b"Datum;Fehler\n01.01.0001 00:00;x\n"
    )
    assert "not within the years" in refusal(b"Datum;Fehler\n31.12.9999 23:59;x\n", timezone="America/New_York")
    assert "not within the years" in refusal(b"Datum;Fehler\n9999-12-31T23:59:00-05:00;x\n")
    assert "log.csv:2: Datum `29.03.2026 02:30` is a time that Europe/Berlin skips" in refusal(
        b"Datum;Fehler\n29.03.2026 02:30;x\n"
    )
    # A line cut short would be a mail sent without an error; a separator too many shifts the fields.
    cut = b"Datum;To;Subject;Fehler\n03.11.2026 09:15;kunde@example.org;Bestellung;\n03.11.2026 09:16;anna@exa"
    assert "log.csv:3: 2 field(s) where the header names 4" in refusal(cut)
    assert "log.csv:2: 3 field(s) where the header names 2" in refusal(b"Datum;Fehler\n01.01.2026;a;extra\n")
    # A quote never closed takes the rest of the file into its field: the row is then short of fields.
    assert "log.csv:2: 2 field(s) where the header names 3" in refusal(b'Datum;Subject;Fehler\n01.01.2026;"open;x\n')
    assert "log.csv:1: a field is longer than 131,072 characters" in refusal(
        b"Datum;Fehler;" + b"X" * 200_000 + b"\n01.01.2026;x;y\n"
    )
    assert "log.csv:3: a field is longer than" in refusal(b"Datum;Fehler\n01.01.2026;x\n01.01.2026;" + b"y" * 200_000)
    assert "larger than" in refusal(b"Fehler\n" + b"x\n" * 1000, limit=1024)
    assert "not found" in refusal(None, name="missing.csv")
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    assert "named pipe" in refusal(None, name="fifo.csv")
    assert "directory" in refusal(None, name=".")
