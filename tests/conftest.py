"""Shared fixtures. Servers (Dovecot, aiosmtpd, the local OAuth provider) start once per session."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO / "config"

VALID_ACCOUNTS = """\
accounts:
  - address: a@example.com
    provider: manual
    display_name: A
    username: a
    password: {env: A_PASSWORD}
    imap: {host: imap.example.com, port: 993, encryption: ssl}
    smtp: {host: smtp.example.com, port: 587, encryption: starttls}
projects:
  SHOP: {email: a@example.com}
"""

VALID_DEFAULTS = """\
defaults:
  email: a@example.com
  sender_name: Example
employees:
  alice: {name: Alice, groups: [support-team]}
queues: [support]
"""

ConfigWriter = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConfigWriter:
    """Write a spec into ``./config`` of a fresh working directory; messages then say ``config/…``."""
    monkeypatch.chdir(tmp_path)

    def write(
        accounts: str = VALID_ACCOUNTS, defaults: str = VALID_DEFAULTS, files: dict[str, str] | None = None
    ) -> Path:
        config = tmp_path / "config"
        config.mkdir(exist_ok=True)
        (config / "accounts.yaml").write_text(textwrap.dedent(accounts), encoding="utf-8")
        (config / "defaults.yaml").write_text(textwrap.dedent(defaults), encoding="utf-8")
        for relative, text in (files or {}).items():
            target = config / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        return Path("config")

    return write


@pytest.fixture
def example_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the shipped example, as ``./config`` of a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(EXAMPLE_CONFIG, tmp_path / "config")
    return Path("config")
