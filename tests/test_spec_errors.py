"""Every kind of broken spec gives its exact located error, and nothing else."""

from __future__ import annotations

import pytest

from mailops.errors import SpecError
from mailops.spec import load_spec
from tests.conftest import VALID_ACCOUNTS, VALID_DEFAULTS

A = "config/accounts.yaml"
D = "config/defaults.yaml"


def accounts(old: str, new: str) -> str:
    assert old in VALID_ACCOUNTS, old
    return VALID_ACCOUNTS.replace(old, new, 1)


def defaults(old: str, new: str) -> str:
    assert old in VALID_DEFAULTS, old
    return VALID_DEFAULTS.replace(old, new, 1)


SECOND_ACCOUNT = """\
  - address: b@example.com
    provider: microsoft
"""

CASES: dict[str, tuple[dict[str, str], list[str]]] = {
    "empty file": (
        {"accounts": ""},
        [f"{A}:1:1: file is empty; expected a mapping with the keys: accounts, projects"],
    ),
    "list where a mapping belongs (top level)": (
        {"accounts": "- address: a@example.com\n"},
        [f"{A}:1:1: expected a mapping with the keys: accounts, projects; got a list"],
    ),
    "list where a mapping belongs (imap)": (
        {
            "accounts": accounts(
                "imap: {host: imap.example.com, port: 993, encryption: ssl}", "imap: [imap.example.com, 993]"
            )
        },
        [f"{A}:7:11: accounts[0].imap: expected a mapping, got a list"],
    ),
    "tab indentation": (
        {"accounts": accounts("    provider: manual", "\tprovider: manual")},
        [f"{A}:3:1: tab character; YAML indentation must use spaces"],
    ),
    "duplicate key": (
        {"accounts": accounts("    display_name: A\n", "    display_name: A\n    display_name: B\n")},
        [f"{A}:5:5: duplicate key `display_name` (each key may appear once per mapping)"],
    ),
    "unterminated flow mapping": (
        {"accounts": accounts("port: 993, encryption: ssl}", "port: 993, encryption: ssl")},
        [f"{A}:8:9: did not find expected ',' or '}}' (while parsing a flow mapping)"],
    ),
    "unknown field with a close match": (
        {
            "accounts": accounts(
                "    username: a\n", "    username: a\n    archive: {enabled: true, retention_day: 30}\n"
            )
        },
        [f"{A}:6:30: accounts[0].archive.retention_day: unknown field; did you mean `retention_days`?"],
    ),
    "unknown field without a close match": (
        {"accounts": accounts("    username: a\n", "    username: a\n    colour: blue\n")},
        [
            f"{A}:6:5: accounts[0].colour: unknown field; expected one of: address, provider, display_name, "
            "username, password, imap, smtp, visible_to, ticket, archive, autoreply, signature, aliases, delegate"
        ],
    ),
    "section in the wrong file": (
        {"accounts": VALID_ACCOUNTS + "queues: [sales]\n"},
        [f"{A}:11:1: queues: unknown key; `queues` belongs in defaults.yaml"],
    ),
    "port 0": (
        {"accounts": accounts("port: 993", "port: 0")},
        [f"{A}:7:42: accounts[0].imap.port: input should be greater than or equal to 1"],
    ),
    "port 70000": (
        {"accounts": accounts("port: 587", "port: 70000")},
        [f"{A}:8:42: accounts[0].smtp.port: input should be less than or equal to 65535"],
    ),
    "port abc": (
        {"accounts": accounts("port: 993", "port: abc")},
        [f"{A}:7:42: accounts[0].imap.port: expected a whole number, got a string"],
    ),
    "unknown encryption": (
        {"accounts": accounts("encryption: ssl}", "encryption: tls}")},
        [f"{A}:7:59: accounts[0].imap.encryption: input should be 'ssl', 'starttls' or 'none'"],
    ),
    "unknown provider": (
        {"accounts": accounts("provider: manual", "provider: exchange")},
        [f"{A}:3:15: accounts[0].provider: input should be 'microsoft', 'google' or 'manual'"],
    ),
    "malformed address": (
        {"accounts": accounts("- address: a@example.com", "- address: a.example.com")},
        [
            f"{A}:2:14: accounts[0].address: not a valid e-mail address: An email address must have an @-sign.",
            f"{A}:10:17: projects.SHOP.email: `a@example.com` is not a declared account; declare it under `accounts:` first",
            f"{D}:2:10: defaults.email: `a@example.com` is not a declared account; declare it under `accounts:` first",
        ],
    ),
    "addresses differing only in case": (
        {"accounts": accounts("projects:", "  - address: A@Example.com\n    provider: google\nprojects:")},
        [
            f"{A}:9:14: accounts[1].address: duplicate address `A@example.com`; already declared at {A}:2:14 "
            "(addresses are compared without regard to case)"
        ],
    ),
    "missing required field": (
        {"accounts": accounts("    provider: manual\n", "")},
        [f"{A}:2:5: accounts[0].provider: required field is missing"],
    ),
    "defaults.email not an account": (
        {"defaults": defaults("email: a@example.com", "email: nobody@example.com")},
        [
            f"{D}:2:10: defaults.email: `nobody@example.com` is not a declared account; declare it under `accounts:` first"
        ],
    ),
    "project email not an account": (
        {"accounts": accounts("SHOP: {email: a@example.com}", "SHOP: {email: shop@example.com}")},
        [
            f"{A}:10:17: projects.SHOP.email: `shop@example.com` is not a declared account; declare it under `accounts:` first"
        ],
    ),
    "ticket.default_project dangling": (
        {
            "accounts": accounts(
                "    username: a\n", "    username: a\n    ticket: {enabled: true, default_project: AMAZON}\n"
            )
        },
        [f"{A}:6:46: accounts[0].ticket.default_project: unknown project `AMAZON`; declare it under `projects:`"],
    ),
    "ticket.default_queue dangling": (
        {
            "accounts": accounts(
                "    username: a\n", "    username: a\n    ticket: {enabled: true, default_queue: billing}\n"
            )
        },
        [
            f"{A}:6:44: accounts[0].ticket.default_queue: unknown queue `billing`; declare it under `queues:` in defaults.yaml"
        ],
    ),
    "visible_to dangling": (
        {
            "accounts": accounts(
                "    username: a\n", "    username: a\n    visible_to: [alice, support-team, mallory]\n"
            )
        },
        [
            f"{A}:6:39: accounts[0].visible_to[2]: `mallory` is neither an employee nor a group declared under `employees:`"
        ],
    ),
    "unknown template variable": (
        {
            "defaults": defaults(
                "  sender_name: Example\n",
                '  sender_name: Example\n  signature: "{MITARBEITER}\\n{MITARBEITER_NAME}"\n',
            )
        },
        [
            f"{D}:4:14: defaults.signature: unknown variable {{MITARBEITER_NAME}}; allowed are {{MITARBEITER}}, "
            "{MITARBEITER_TELEFON}, {MITARBEITER_MOBIL}, {MITARBEITER_EMAIL}, {MITARBEITER_TELEFAX}"
        ],
    ),
    "three CC addresses": (
        {
            "defaults": defaults(
                "  sender_name: Example\n",
                "  sender_name: Example\n  cc: [x@example.com, y@example.com, z@example.com]\n",
            )
        },
        [f"{D}:4:7: defaults.cc: at most 2 copy recipients are allowed (Kopie-Empfänger 1 and 2), got 3"],
    ),
    "literal password": (
        {"accounts": accounts("password: {env: A_PASSWORD}", "password: hunter2-literal")},
        [
            f"{A}:6:15: accounts[0].password: a literal password is not allowed in the spec; reference it as "
            "{env: VARIABLE} or {file: PATH}"
        ],
    ),
    "password with two sources": (
        {"accounts": accounts("password: {env: A_PASSWORD}", "password: {env: A_PASSWORD, file: a.txt}")},
        [f"{A}:6:15: accounts[0].password: give exactly one of `env` or `file`"],
    ),
    "password file missing": (
        {"accounts": accounts("password: {env: A_PASSWORD}", "password: {file: secrets/a.txt}")},
        [
            f"{A}:6:22: accounts[0].password.file: secret file `secrets/a.txt` not found (paths are relative to the config dir)"
        ],
    ),
    "password on an OAuth account": (
        {"accounts": accounts("projects:", SECOND_ACCOUNT + "    password: {env: B_PASSWORD}\nprojects:")},
        [
            f"{A}:11:5: accounts[1].password: microsoft accounts connect by OAuth consent (`mailops connect`), "
            "not a password; remove `password`"
        ],
    ),
    "manual account without username": (
        {"accounts": accounts("    username: a\n", "")},
        [f"{A}:2:5: accounts[0].username: required for manual accounts"],
    ),
    "manual account without servers and no preset": (
        {
            "accounts": accounts(
                "    imap: {host: imap.example.com, port: 993, encryption: ssl}\n"
                "    smtp: {host: smtp.example.com, port: 587, encryption: starttls}\n",
                "",
            )
        },
        [
            f"{A}:2:5: accounts[0].imap: required for manual accounts: no preset is known for `example.com`; "
            "give host, port and encryption",
            f"{A}:2:5: accounts[0].smtp: required for manual accounts: no preset is known for `example.com`; "
            "give host, port and encryption",
        ],
    ),
    "server block missing a field": (
        {
            "accounts": accounts(
                "imap: {host: imap.example.com, port: 993, encryption: ssl}",
                "imap: {host: imap.example.com, port: 993}",
            )
        },
        [f"{A}:7:5: accounts[0].imap.encryption: required field is missing"],
    ),
    "encryption none under require_encryption": (
        {"accounts": accounts("port: 587, encryption: starttls", "port: 25, encryption: none")},
        [
            f"{A}:8:58: accounts[0].smtp.encryption: `none` is refused by policies.require_encryption; use ssl or starttls"
        ],
    ),
    "import_since not a date": (
        {"accounts": accounts("    username: a\n", "    username: a\n    ticket: {import_since: last week}\n")},
        [
            f"{A}:6:28: accounts[0].ticket.import_since: not a valid date `last week`; write it as YYYY-MM-DD, e.g. 2026-01-31"
        ],
    ),
    "negative retention": (
        {
            "accounts": accounts(
                "    username: a\n", "    username: a\n    archive: {enabled: true, retention_days: -1}\n"
            )
        },
        [f"{A}:6:46: accounts[0].archive.retention_days: input should be greater than or equal to 0"],
    ),
    "auto-reply enabled without text": (
        {
            "accounts": accounts(
                "    username: a\n", "    username: a\n    autoreply: {enabled: true, body: '<p>Thanks</p>'}\n"
            )
        },
        [f"{A}:6:5: accounts[0].autoreply.subject: required when the auto-reply is enabled"],
    ),
    "delete fraction above 1": (
        {"defaults": VALID_DEFAULTS + "policies: {max_delete_fraction: 1.5}\n"},
        [f"{D}:8:33: policies.max_delete_fraction: input should be less than or equal to 1"],
    ),
    "defaults section missing": (
        {"defaults": "queues: [support]\n"},
        [f"{D}:1:1: `defaults:` is required"],
    ),
    "template file missing": (
        {
            "defaults": defaults(
                "  sender_name: Example\n", "  sender_name: Example\n  html_template: templates/mail.html\n"
            )
        },
        [
            f"{D}:4:18: defaults.html_template: template file `templates/mail.html` not found (paths are relative to the config dir)"
        ],
    ),
    "template that is not HTML": (
        {
            "defaults": defaults("  sender_name: Example\n", "  sender_name: Example\n  html_template: mail.txt\n"),
            "mail.txt": "Dear customer, {CONTENT}\nRegards",
        },
        [f"{D}:4:18: defaults.html_template: mail.txt is not HTML: it contains no HTML elements"],
    ),
    "template with mismatched tags and no placeholder": (
        {
            "defaults": defaults("  sender_name: Example\n", "  sender_name: Example\n  html_template: mail.html\n"),
            "mail.html": "<html><body>\n<div><span>Hello</div>\n</body></html>\n",
        },
        [
            f"{D}:4:18: defaults.html_template: mail.html has no {{CONTENT}} placeholder where the mail's content goes",
            f"{D}:4:18: defaults.html_template: mail.html:2:17: closing tag </div> while <span> (opened at 2:6) is still open",
        ],
    ),
    "accounts file missing": (
        {"accounts": None},
        [f"{A}:1:1: file not found"],
    ),
}


@pytest.mark.parametrize("files, expected", CASES.values(), ids=CASES.keys())
def test_broken_spec_gives_located_errors(write_config, files: dict[str, str | None], expected: list[str]) -> None:
    config = write_config(
        accounts=files.get("accounts", VALID_ACCOUNTS) or "",
        defaults=files.get("defaults", VALID_DEFAULTS),
        files={name: text for name, text in files.items() if name not in ("accounts", "defaults")},
    )
    if "accounts" in files and files["accounts"] is None:
        (config / "accounts.yaml").unlink()
    with pytest.raises(SpecError) as caught:
        load_spec(config)
    assert sorted(str(problem) for problem in caught.value.problems) == sorted(expected)


def test_there_are_at_least_25_distinct_broken_inputs() -> None:
    assert len(CASES) >= 25


def test_several_problems_in_both_files_are_reported_in_one_run(write_config) -> None:
    broken_accounts = accounts("port: 993", "port: 0")
    broken_accounts = broken_accounts.replace("encryption: starttls", "encryption: tls")
    broken_accounts = broken_accounts.replace("SHOP: {email: a@example.com}", "SHOP: {email: x@example.com}")
    broken_defaults = defaults("email: a@example.com", "email: nobody@example.com") + "surprise: 1\n"
    config = write_config(accounts=broken_accounts, defaults=broken_defaults)
    with pytest.raises(SpecError) as caught:
        load_spec(config)
    paths = [(problem.file, problem.path) for problem in caught.value.problems]
    assert paths == [
        (A, "accounts[0].imap.port"),
        (A, "accounts[0].smtp.encryption"),
        (A, "projects.SHOP.email"),
        (D, "defaults.email"),
        (D, "surprise"),
    ]


def test_a_broken_account_does_not_hide_problems_in_the_next_one(write_config) -> None:
    two = accounts("projects:", SECOND_ACCOUNT + "    visible_to: [nobody]\nprojects:").replace("port: 993", "port: x")
    with pytest.raises(SpecError) as caught:
        load_spec(write_config(accounts=two))
    assert [problem.path for problem in caught.value.problems] == ["accounts[0].imap.port", "accounts[1].visible_to[0]"]


def test_errors_never_repeat_a_literal_password(write_config) -> None:
    config = write_config(accounts=accounts("password: {env: A_PASSWORD}", "password: hunter2-literal"))
    with pytest.raises(SpecError) as caught:
        load_spec(config)
    assert "hunter2" not in " ".join(str(problem) for problem in caught.value.problems)
