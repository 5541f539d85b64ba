"""Hostile and broken spec input: every case ends in located problems (or loads), never a crash or a hang."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from mailops.errors import SpecError
from mailops.spec import load_spec
from tests.conftest import VALID_ACCOUNTS, VALID_DEFAULTS

A = "config/accounts.yaml"
D = "config/defaults.yaml"


def problems_of(config: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(config)
    return [str(problem) for problem in caught.value.problems]


def bomb(key: str, indent: str = "") -> str:
    """The classic "billion laughs": nine levels of nine aliases, about 640 bytes."""
    lines = [f'{indent}a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level, name in enumerate("bcdefgh"):
        previous = "abcdefgh"[level]
        lines.append(f"{indent}{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    lines.append(f"{indent}{key}: [*h]")
    return "\n".join(lines) + "\n"


# -- 1. alias bombs ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["queues", "groups", "visible_to"])
def test_an_alias_bomb_is_refused_where_it_explodes(write_config, where: str) -> None:
    if where == "queues":
        defaults = VALID_DEFAULTS.replace("queues: [support]\n", "") + "x-anchors:\n" + bomb("queues", "  ")
        defaults = defaults.replace("  queues: [*h]\n", "queues: [*h]\n")
        config = write_config(defaults=defaults)
    elif where == "groups":
        employees = "employees:\n  alice: {name: Alice, groups: [support-team]}\n"
        defaults = VALID_DEFAULTS.replace(employees, "") + "x:\n" + bomb("y", "  ")
        defaults += "employees:\n  alice: {name: Alice, groups: *h}\n"
        config = write_config(defaults=defaults)
    else:
        accounts = (
            "x:\n"
            + bomb("y", "  ")
            + VALID_ACCOUNTS.replace("    username: a\n", "    username: a\n    visible_to: *h\n")
        )
        config = write_config(accounts=accounts)
    assert os.path.getsize(config / ("accounts.yaml" if where == "visible_to" else "defaults.yaml")) < 1200
    problems = problems_of(config)
    assert len(problems) == 1
    assert "aliases expand the document to more than" in problems[0]
    assert "an alias may repeat a value, not multiply the document" in problems[0]


def test_a_recursive_alias_is_refused(write_config) -> None:
    config = write_config(defaults=VALID_DEFAULTS.replace("queues: [support]", "queues: &q [support, *q]"))
    assert problems_of(config) == [f"{D}:6:22: alias `*q` refers to itself (recursive)"]


def test_aliases_that_repeat_a_value_are_fine(write_config) -> None:
    defaults = VALID_DEFAULTS.replace("groups: [support-team]", "groups: &teams [support-team]")
    defaults += "x-more: {groups: *teams}\n"
    config = write_config(defaults=defaults.replace("x-more: {groups: *teams}\n", ""))
    assert load_spec(config).spec.employees["alice"].groups == ["support-team"]


def test_merge_keys_fill_what_the_mapping_does_not_say(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace(
        "    imap: {host: imap.example.com, port: 993, encryption: ssl}\n",
        "    imap: {<<: {host: imap.example.com, port: 143, encryption: ssl}, port: 993}\n",
    )
    account = load_spec(write_config(accounts=accounts)).spec.accounts[0]
    assert account.imap is not None and (account.imap.host, account.imap.port) == ("imap.example.com", 993)


# -- 2. deep nesting --------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deep_nesting_is_refused_at_the_first_level_too_deep(write_config, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    config = write_config(
        accounts=VALID_ACCOUNTS.replace("    username: a\n", f"    username: a\n    visible_to: {nested}\n")
    )
    # The 30th bracket opens the 33rd level (the document, the list, the account are the first three).
    assert problems_of(config) == [f"{A}:6:46: nested more than 32 levels deep; the spec needs few"]


def test_an_alias_cannot_nest_the_document_deeper_than_the_limit(write_config) -> None:
    lines = ["x:", "  l0: &l0 [1]"] + [f"  l{n}: &l{n} [*l{n - 1}]" for n in range(1, 40)]
    config = write_config(defaults=VALID_DEFAULTS + "\n".join(lines) + "\n")
    [problem] = problems_of(config)
    assert "nests the document more than 32 levels deep" in problem


# -- 3. impossible dates ----------------------------------------------------------------


def test_an_impossible_date_is_a_located_error(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("    username: a\n", "    username: a\n    ticket: {import_since: 2026-13-45}\n")
    assert problems_of(write_config(accounts=accounts)) == [
        f"{A}:6:28: accounts[0].ticket.import_since: not a valid date `2026-13-45`; write it as YYYY-MM-DD, "
        "e.g. 2026-01-31"
    ]


def test_a_date_is_still_a_date(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("    username: a\n", "    username: a\n    ticket: {import_since: 2026-02-28}\n")
    assert str(load_spec(write_config(accounts=accounts)).spec.accounts[0].ticket.import_since) == "2026-02-28"


def test_a_timestamp_where_text_belongs_stays_text(write_config) -> None:
    # YAML 1.2's core schema has no timestamps: this is a display name, not a date.
    accounts = VALID_ACCOUNTS.replace("display_name: A", "display_name: 2026-01-01")
    assert load_spec(write_config(accounts=accounts)).spec.accounts[0].display_name == "2026-01-01"


# -- 4. bytes that are not YAML text ----------------------------------------------------


@pytest.mark.parametrize(
    "character, name", [("\x00", "U+0000 (NUL)"), ("\x1b", "U+001B (ESC)"), ("\x7f", "U+007F (DEL)")]
)
def test_a_control_character_in_the_file_is_located(write_config, character: str, name: str) -> None:
    config = write_config(accounts=VALID_ACCOUNTS.replace("display_name: A", f"display_name: A{character}B"))
    assert problems_of(config) == [f"{A}:4:20: control character {name} is not allowed"]


def test_non_utf8_bytes_are_located_by_line_and_column(write_config) -> None:
    config = write_config()
    text = VALID_ACCOUNTS.replace("display_name: A", "display_name: Müller ").encode("utf-8")
    text = text.replace("Müller ".encode(), "Müller ".encode() + b"\xff")
    (config / "accounts.yaml").write_bytes(text)
    # The column counts characters, so the two-byte ü before the bad byte counts once.
    assert problems_of(config) == [f"{A}:4:26: not valid UTF-8 (byte 0xff); save the file as UTF-8"]


def test_a_byte_order_mark_is_accepted(write_config) -> None:
    config = write_config()
    (config / "accounts.yaml").write_bytes(b"\xef\xbb\xbf" + VALID_ACCOUNTS.encode())
    assert load_spec(config).spec.accounts[0].address == "a@example.com"


def test_unsupported_tags_and_second_documents_are_refused(write_config) -> None:
    config = write_config(accounts=VALID_ACCOUNTS.replace("display_name: A", "display_name: !!python/name:os.system A"))
    assert problems_of(config) == [
        f"{A}:4:19: tag `tag:yaml.org,2002:python/name:os.system` is not supported; remove it"
    ]
    config = write_config(accounts=VALID_ACCOUNTS + "---\naccounts: []\n")
    assert problems_of(config) == [f"{A}:11:1: a second YAML document; the file must hold exactly one"]


def test_a_spec_file_that_is_not_a_regular_file_is_refused(write_config) -> None:
    config = write_config()
    (config / "accounts.yaml").unlink()
    os.mkfifo(config / "accounts.yaml")  # reading it would wait forever for a writer
    assert problems_of(config) == [f"{A}:1:1: file is a named pipe (FIFO), not a regular file"]


DEFAULTS_WITH_TEMPLATE = VALID_DEFAULTS.replace(
    "  sender_name: Example\n", "  sender_name: Example\n  html_template: mail.html\n"
)


def test_an_html_template_that_is_a_device_is_refused(write_config) -> None:
    config = write_config(defaults=DEFAULTS_WITH_TEMPLATE)
    (config / "mail.html").symlink_to("/dev/zero")  # reading it would never end
    assert problems_of(config) == [
        f"{D}:4:18: defaults.html_template: template `mail.html` is a character device, not a regular file"
    ]


def test_an_html_template_that_is_a_fifo_is_refused(write_config) -> None:
    config = write_config(defaults=DEFAULTS_WITH_TEMPLATE)
    os.mkfifo(config / "mail.html")
    # Opened without blocking: a FIFO without a writer does not hang the load.
    done = threading.Event()
    result: list[list[str]] = []

    def load() -> None:
        result.append(problems_of(config))
        done.set()

    threading.Thread(target=load, daemon=True).start()
    if not done.wait(30):
        pytest.fail("loading the spec hangs on a FIFO template")
    assert result[0] == [
        f"{D}:4:18: defaults.html_template: template `mail.html` is a named pipe (FIFO), not a regular file"
    ]


def test_an_oversized_html_template_is_refused(write_config) -> None:
    config = write_config(defaults=DEFAULTS_WITH_TEMPLATE)
    with open(config / "mail.html", "wb") as handle:
        handle.truncate(2 * 1024 * 1024)  # sparse: costs no disk
    assert problems_of(config) == [
        f"{D}:4:18: defaults.html_template: template `mail.html` is larger than 1 MiB; refusing to read it"
    ]


def test_an_html_template_that_is_not_utf8_is_located(write_config) -> None:
    config = write_config(defaults=DEFAULTS_WITH_TEMPLATE, files={"mail.html": ""})
    (config / "mail.html").write_bytes(b"<html><body>\n<p>\xe9t\xe9 {CONTENT}</p></body></html>\n")
    assert problems_of(config) == [
        f"{D}:4:18: defaults.html_template: mail.html:2:4: not valid UTF-8 (byte 0xe9); save the file as UTF-8"
    ]


def test_a_missing_config_dir_is_one_error_naming_the_dir_as_given(tmp_path: Path) -> None:
    from mailops.spec.loader import ConfigDirError

    with pytest.raises(ConfigDirError, match=r"^config directory /nonexistent/dir not found$"):
        load_spec("/nonexistent/dir")


# -- 5. control characters in values ----------------------------------------------------


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (
            "username: a",
            'username: "a@example.com\\r\\nX1 CREATE pwned"',
            f"{A}:5:15: accounts[0].username: control character U+000D (carriage return) is not allowed; "
            "this value must be a single line",
        ),
        (
            "display_name: A",
            'display_name: "A\\r\\nBcc: victim@example.org"',
            f"{A}:4:19: accounts[0].display_name: control character U+000D (carriage return) is not allowed; "
            "this value must be a single line",
        ),
        (
            "host: imap.example.com",
            'host: "imap.example.com\\u2028x"',
            f"{A}:7:18: accounts[0].imap.host: control character U+2028 (line separator) is not allowed; "
            "this value must be a single line",
        ),
        (
            "SHOP: {email: a@example.com}",
            'SHOP: {email: a@example.com, sender_name: "Shop\\nX-Evil: 1"}',
            f"{A}:10:45: projects.SHOP.sender_name: control character U+000A (line feed) is not allowed; "
            "this value must be a single line",
        ),
    ],
)
def test_control_characters_that_would_reach_a_protocol_are_refused(write_config, old, new, expected) -> None:
    assert problems_of(write_config(accounts=VALID_ACCOUNTS.replace(old, new))) == [expected]


def test_multi_line_texts_keep_line_breaks_but_refuse_other_controls(write_config) -> None:
    defaults = VALID_DEFAULTS.replace(
        "  sender_name: Example\n", '  sender_name: Example\n  signature: "{MITARBEITER}\\n\\tTel."\n'
    )
    assert load_spec(write_config(defaults=defaults)).spec.defaults.signature == "{MITARBEITER}\n\tTel."
    defaults = defaults.replace("\\n\\tTel.", "\\r\\nTel.")
    assert problems_of(write_config(defaults=defaults)) == [
        f"{D}:4:14: defaults.signature: control character U+000D (carriage return) is not allowed; "
        "write a line break as \\n"
    ]


# -- 6. internationalised addresses -----------------------------------------------------


def test_a_unicode_domain_and_its_punycode_are_the_same_account(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("- address: a@example.com", "- address: info@bücher.example")
    accounts = accounts.replace("SHOP: {email: a@example.com}", "SHOP: {email: INFO@xn--bcher-kva.example}")
    defaults = VALID_DEFAULTS.replace("email: a@example.com", "email: info@BÜCHER.example")
    spec = load_spec(write_config(accounts=accounts, defaults=defaults)).spec
    # Every protocol gets the ASCII form; references in either form find the account.
    assert spec.accounts[0].address == "info@xn--bcher-kva.example"
    assert spec.account("info@bücher.example") is spec.accounts[0]
    assert spec.projects_of("info@bücher.example") == ["SHOP"]


def test_the_same_address_twice_in_unicode_and_punycode_is_a_duplicate(write_config) -> None:
    second = "  - address: info@xn--bcher-kva.example\n    provider: google\n"
    accounts = VALID_ACCOUNTS.replace("- address: a@example.com", "- address: info@bücher.example")
    accounts = accounts.replace("projects:\n  SHOP: {email: a@example.com}\n", second)
    defaults = VALID_DEFAULTS.replace("email: a@example.com", "email: info@bücher.example")
    [problem] = problems_of(write_config(accounts=accounts, defaults=defaults))
    assert problem.startswith(f"{A}:9:14: accounts[1].address: duplicate address `info@xn--bcher-kva.example`")


def test_a_non_ascii_local_part_is_refused_with_a_reason(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("- address: a@example.com", "- address: jörg@example.com")
    defaults = VALID_DEFAULTS.replace("email: a@example.com", "email: jörg@example.com")
    problems = problems_of(
        write_config(
            accounts=accounts.replace("{email: a@example.com}", "{email: jörg@example.com}"), defaults=defaults
        )
    )
    assert problems[0] == (
        f"{A}:2:14: accounts[0].address: not a valid e-mail address: non-ASCII characters before the @ need "
        "SMTPUTF8, which mailops does not use; use the mailbox's ASCII address or alias"
    )


# -- 7. strict types --------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("port: 993", "port: true", f"{A}:7:42: accounts[0].imap.port: expected a whole number, got a boolean"),
        ("port: 993", "port: 993.0", f"{A}:7:42: accounts[0].imap.port: expected a whole number, got a number"),
        ("port: 993", 'port: "993"', f"{A}:7:42: accounts[0].imap.port: expected a whole number, got a string"),
        ("port: 993", "port: " + "9" * 5000, f"{A}:7:42: number with more than 4300 digits"),
    ],
)
def test_numbers_are_strict(write_config, old: str, new: str, expected: str) -> None:
    assert problems_of(write_config(accounts=VALID_ACCOUNTS.replace(old, new))) == [expected]


def test_booleans_are_strict(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("    username: a\n", "    username: a\n    archive: {enabled: yes}\n")
    assert problems_of(write_config(accounts=accounts)) == [
        f"{A}:6:24: accounts[0].archive.enabled: expected true or false, got a string"
    ]


# -- 14. one mistake, one message -------------------------------------------------------


def test_a_broken_policy_field_keeps_the_other_policies(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("port: 587, encryption: starttls", "port: 25, encryption: none")
    defaults = VALID_DEFAULTS + "policies: {require_encryption: false, max_delete_fraction: 2}\n"
    assert problems_of(write_config(accounts=accounts, defaults=defaults)) == [
        f"{D}:8:60: policies.max_delete_fraction: input should be less than or equal to 1"
    ]


def test_an_address_with_a_display_name_is_one_error(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("- address: a@example.com", '- address: "A <a@example.com>"')
    [problem] = problems_of(write_config(accounts=accounts))
    assert problem.startswith(f"{A}:2:14: accounts[0].address: not a valid e-mail address: A display name")


def test_a_broken_field_does_not_hide_the_checks_of_the_others(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace(
        "    username: a\n",
        "    username: a\n    archive: {enabled: true, retention_days: -5}\n    visible_to: [ghost-team]\n",
    )
    assert problems_of(write_config(accounts=accounts)) == [
        f"{A}:6:46: accounts[0].archive.retention_days: input should be greater than or equal to 0",
        f"{A}:7:18: accounts[0].visible_to[0]: `ghost-team` is neither an employee nor a group declared under "
        "`employees:`",
    ]


def test_a_broken_server_block_is_not_reported_again_as_missing(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("port: 993", "port: x")
    assert problems_of(write_config(accounts=accounts)) == [
        f"{A}:7:42: accounts[0].imap.port: expected a whole number, got a string"
    ]


def test_an_error_at_the_end_of_a_file_points_into_the_file(write_config) -> None:
    config = write_config()
    (config / "accounts.yaml").write_bytes(b"accounts:\na")  # no final line break
    [problem] = problems_of(config)
    assert problem.startswith(f"{A}:2:2: ")


def test_positions_count_old_mac_line_breaks(write_config) -> None:
    config = write_config()
    (config / "accounts.yaml").write_bytes(
        VALID_ACCOUNTS.replace("display_name: A", "display_name: A\x1b").replace("\n", "\r").encode()
    )
    assert problems_of(config) == [f"{A}:4:20: control character U+001B (ESC) is not allowed"]


# -- found by an attacker's review -------------------------------------------------------


def test_a_short_hex_number_too_large_to_print_is_refused(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace(
        "    username: a\n", "    username: a\n    archive: {retention_days: 0x" + "f" * 4300 + "}\n"
    )
    assert problems_of(write_config(accounts=accounts)) == [f"{A}:6:31: number with more than 4300 decimal digits"]


def test_only_a_plain_double_angle_is_a_merge_key(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("    username: a\n", '    username: a\n    "<<": {signature: x}\n')
    [problem] = problems_of(write_config(accounts=accounts))
    assert problem.startswith(f"{A}:6:5: accounts[0].<<: unknown field")


def test_repeating_a_long_text_through_aliases_is_bounded(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("display_name: A", "display_name: &s " + "x" * 100_000)
    accounts += "x-many: [" + ", ".join(["*s"] * 1000) + "]\n"
    [problem] = problems_of(write_config(accounts=accounts))
    assert "aliases expand the document to more than" in problem


def test_many_broken_list_items_are_each_reported_once(write_config) -> None:
    defaults = VALID_DEFAULTS.replace("queues: [support]", "queues: [support" + ", 1" * 20_000 + "]")
    problems = problems_of(write_config(defaults=defaults))
    assert len(problems) == 20_000
    assert problems[0] == f"{D}:6:19: queues[1]: expected text, got a number"


def test_control_characters_in_messages_are_shown_escaped(write_config) -> None:
    accounts = VALID_ACCOUNTS + '"\\e]0;pwned\\a\\rLOOKS FINE": 1\n'
    [problem] = problems_of(write_config(accounts=accounts))
    assert problem == (f"{A}:11:1: \\x1b]0;pwned\\x07\\rLOOKS FINE: unknown key; expected one of: accounts, projects")


@pytest.mark.parametrize("name", ["hunter2!", "MY SECRET", "1PASSWORD"])
def test_a_secret_reference_must_name_a_variable(write_config, name: str) -> None:
    accounts = VALID_ACCOUNTS.replace("{env: A_PASSWORD}", f'{{env: "{name}"}}')
    [problem] = problems_of(write_config(accounts=accounts))
    assert "not an environment variable name" in problem
    assert name not in problem


@pytest.mark.parametrize("date", ["20260101", "2026-W01-1", "2026-001"])
def test_dates_are_written_as_year_month_day(write_config, date: str) -> None:
    accounts = VALID_ACCOUNTS.replace("    username: a\n", f'    username: a\n    ticket: {{import_since: "{date}"}}\n')
    [problem] = problems_of(write_config(accounts=accounts))
    assert f"not a valid date `{date}`; write it as YYYY-MM-DD" in problem
