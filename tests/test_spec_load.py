"""The shipped example and valid specs load completely, with server defaults filled in."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel
from ruamel.yaml import YAML

from mailops.providers.presets import all_presets
from mailops.spec import load_spec
from mailops.spec.models import AccountsFile, DefaultsFile, ServerSettings
from tests.conftest import EXAMPLE_CONFIG, VALID_ACCOUNTS, VALID_DEFAULTS


def test_the_example_config_is_valid_and_complete(example_config) -> None:
    loaded = load_spec(example_config)
    spec = loaded.spec
    assert [a.address for a in spec.accounts] == [
        "support@example.com",
        "sales@example.org",
        "team@example.com",
        "info@web.de",
        "shop@example.net",
    ]
    assert spec.projects_of("support@example.com") == ["SHOP"]
    assert all(a.imap is not None and a.smtp is not None for a in spec.accounts)


def _field_names(model: type[BaseModel], seen: set[str]) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        names.add(f"{model.__name__}.{name}")
        for candidate in _models_in(info.annotation):
            if candidate.__name__ not in seen:
                seen.add(candidate.__name__)
                names |= _field_names(candidate, seen)
    return names


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _keys_used(node: object, model: type[BaseModel], used: set[str]) -> None:
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key not in model.model_fields:
            continue
        used.add(f"{model.__name__}.{key}")
        for child_model in _models_in(model.model_fields[key].annotation):
            items = (
                value
                if isinstance(value, list)
                else value.values()
                if isinstance(value, dict) and not set(value) & set(child_model.model_fields)
                else [value]
            )
            for item in items:
                _keys_used(item, child_model, used)


def test_the_example_uses_every_field() -> None:
    yaml = YAML(typ="safe")
    used: set[str] = set()
    for name, model in (("accounts.yaml", AccountsFile), ("defaults.yaml", DefaultsFile)):
        _keys_used(yaml.load((EXAMPLE_CONFIG / name).read_text()), model, used)
    declared = _field_names(AccountsFile, set()) | _field_names(DefaultsFile, set())
    assert declared - used == set()


def test_oauth_accounts_get_provider_servers_and_a_display_name(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace(
        "projects:",
        "  - address: team@example.org\n    provider: google\n"
        "  - address: ops@example.org\n    provider: microsoft\n    display_name: Operations\nprojects:",
    )
    loaded = load_spec(write_config(accounts=accounts))
    google, microsoft = loaded.spec.accounts[1:]
    assert google.display_name == "team"
    assert google.username == "team@example.org"
    assert google.imap == ServerSettings(host="imap.gmail.com", port=993, encryption="ssl")
    assert google.smtp == ServerSettings(host="smtp.gmail.com", port=465, encryption="ssl")
    assert microsoft.display_name == "Operations"
    assert microsoft.imap == ServerSettings(host="outlook.office365.com", port=993, encryption="ssl")
    assert microsoft.smtp == ServerSettings(host="smtp.office365.com", port=587, encryption="starttls")
    assert [str(note) for note in loaded.notes] == [
        "config/accounts.yaml:9:5: accounts[1]: filled display_name, username, imap, smtp from google defaults",
        "config/accounts.yaml:11:5: accounts[2]: filled username, imap, smtp from microsoft defaults",
    ]


@pytest.mark.parametrize(
    "domain, imap_host, smtp",
    [
        ("web.de", "imap.web.de", ("smtp.web.de", 587, "starttls")),
        ("gmx.de", "imap.gmx.net", ("mail.gmx.net", 587, "starttls")),
        ("gmx.net", "imap.gmx.net", ("mail.gmx.net", 587, "starttls")),
        ("t-online.de", "secureimap.t-online.de", ("securesmtp.t-online.de", 465, "ssl")),
        ("ionos.de", "imap.ionos.de", ("smtp.ionos.de", 465, "ssl")),
        ("strato.de", "imap.strato.de", ("smtp.strato.de", 465, "ssl")),
        ("yahoo.com", "imap.mail.yahoo.com", ("smtp.mail.yahoo.com", 465, "ssl")),
        ("icloud.com", "imap.mail.me.com", ("smtp.mail.me.com", 587, "starttls")),
        ("posteo.de", "posteo.de", ("posteo.de", 587, "starttls")),
        ("mailbox.org", "imap.mailbox.org", ("smtp.mailbox.org", 465, "ssl")),
    ],
)
def test_manual_accounts_of_known_providers_are_filled_from_presets(write_config, domain, imap_host, smtp) -> None:
    accounts = VALID_ACCOUNTS.replace(
        "projects:",
        f"  - address: shop@{domain}\n    provider: manual\n    display_name: Shop\n"
        f"    username: shop@{domain}\n    password: {{env: SHOP_PASSWORD}}\nprojects:",
    )
    loaded = load_spec(write_config(accounts=accounts))
    account = loaded.spec.account(f"shop@{domain}")
    assert account.imap == ServerSettings(host=imap_host, port=993, encryption="ssl")
    assert account.smtp == ServerSettings(host=smtp[0], port=smtp[1], encryption=smtp[2])
    assert [note.message for note in loaded.notes] == [f"filled imap, smtp from preset {account_preset(domain)}"]


def account_preset(domain: str) -> str:
    return next(p.name for p in all_presets() if domain in p.domains)


def test_every_preset_names_its_source() -> None:
    for preset in all_presets():
        assert preset.source.startswith("https://"), preset.name


def test_explicit_servers_win_over_a_preset(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace(
        "projects:",
        "  - address: shop@web.de\n    provider: manual\n    display_name: Shop\n    username: shop\n"
        "    password: {env: P}\n    imap: {host: imap.example.com, port: 143, encryption: starttls}\nprojects:",
    )
    account = load_spec(write_config(accounts=accounts)).spec.account("shop@web.de")
    assert account.imap == ServerSettings(host="imap.example.com", port=143, encryption="starttls")
    assert account.smtp.host == "smtp.web.de"


def test_encryption_none_is_allowed_when_the_policy_allows_it(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("port: 587, encryption: starttls", "port: 25, encryption: none")
    defaults = VALID_DEFAULTS + "policies: {require_encryption: false}\n"
    spec = load_spec(write_config(accounts=accounts, defaults=defaults)).spec
    assert spec.accounts[0].smtp.encryption == "none"


def test_a_password_file_that_exists_is_accepted(write_config) -> None:
    accounts = VALID_ACCOUNTS.replace("{env: A_PASSWORD}", "{file: secrets/a.txt}")
    spec = load_spec(write_config(accounts=accounts, files={"secrets/a.txt": "s3cret\n"})).spec
    assert spec.accounts[0].password.file == "secrets/a.txt"
