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

# The OAuth apps, so that a test may declare Microsoft and Google accounts.
OAUTH_APPS = "oauth: {microsoft: {client_id: app-1}, google: {client_secrets: {env: GOOGLE_CLIENT}}}\n"

VALID_DEFAULTS = (
    """\
defaults:
  email: a@example.com
  sender_name: Example
employees:
  alice: {name: Alice, groups: [support-team]}
queues: [support]
"""
    + OAUTH_APPS
)

ConfigWriter = Callable[..., Path]


@pytest.fixture(scope="session", autouse=True)
def _private_tool_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """matplotlib and Jupyter write caches under ~ unless told otherwise: keep the tests' own."""
    import os

    root = tmp_path_factory.mktemp("tool-caches")
    for variable in ("MPLCONFIGDIR", "IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        os.environ.setdefault(variable, str(root / variable.lower()))


@pytest.fixture(scope="session", autouse=True)
def _no_proxy_from_the_caller() -> None:
    """The identity providers' HTTPS takes the environment's proxy; the tests' servers are reached directly
    (a test that wants a proxy sets its own)."""
    import os

    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        os.environ.pop(variable, None)


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


# --- real mail servers ------------------------------------------------------------

import itertools  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from mailops.localservers.idp import LocalIdentityProvider  # noqa: E402
from tests.servers import HOST, Dovecot, MailUsers, Postgres, Smtp, write_certificate  # noqa: E402


@dataclass
class MailServers:
    users: MailUsers
    dovecot: Dovecot
    smtp: Smtp
    cert: Path  # the servers' certificate; the identity provider serves the same one
    identity_provider: LocalIdentityProvider | None = None

    def ports(self, imap: str, smtp: str) -> tuple[int, int]:
        imap_port = {
            "ssl": self.dovecot.tls_port,
            "starttls": self.dovecot.plain_port,
            "none": self.dovecot.plain_port,
        }[imap]
        smtp_port = {"ssl": self.smtp.tls_port, "starttls": self.smtp.starttls_port, "none": self.smtp.plain_port}[smtp]
        return imap_port, smtp_port


@pytest.fixture(scope="session")
def identity_provider():
    """The local OAuth provider (HTTPS on 127.0.0.1), started once per session.

    The mail servers check its access tokens (XOAUTH2) and use its certificate, so one CA
    file trusts all three. Register users with ``mail_servers.users.add_oauth(address)`` (a
    mailbox too) or `LocalIdentityProvider.add_user`, and get tokens from
    `LocalIdentityProvider.issue_access_token` or a real flow.
    """
    root = Path(tempfile.mkdtemp(prefix="mailops-idp-"))
    root.chmod(0o755)  # Dovecot's auth process reads the certificate as user dovecot
    cert, key = write_certificate(root)
    provider = LocalIdentityProvider(cert, key)
    provider.start()
    yield provider
    provider.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mail_servers(identity_provider: LocalIdentityProvider):
    if not shutil.which("dovecot") and not Path("/usr/sbin/dovecot").exists():
        pytest.fail("Dovecot is not installed; `make test` installs it (Debian package dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix="mailops-servers-"))
    root.chmod(0o755)  # Dovecot's auth process runs as another user and must reach the files
    cert, key = identity_provider.cert_file, identity_provider.key_file
    users = MailUsers(root, identity_provider=identity_provider)
    dovecot = Dovecot(root, users, cert, key)
    smtp = Smtp(users, cert, key)
    dovecot.start()
    smtp.start()
    yield MailServers(users, dovecot, smtp, cert, identity_provider)
    smtp.stop()
    dovecot.stop()
    shutil.rmtree(root, ignore_errors=True)


_account_numbers = itertools.count(1)


@dataclass
class ServerAccount:
    """A mailbox that exists on both test servers, with its password in an environment variable."""

    address: str
    password: str
    env_name: str

    def yaml(self, servers: MailServers, imap: str = "ssl", smtp: str = "starttls", **overrides: object) -> str:
        imap_port, smtp_port = servers.ports(imap, smtp)
        fields = {
            "address": self.address,
            "provider": "manual",
            "display_name": self.address.split("@")[0],
            "username": self.address,
            "password": f"{{env: {self.env_name}}}",
            "imap": f"{{host: {HOST}, port: {imap_port}, encryption: {imap}}}",
            "smtp": f"{{host: {HOST}, port: {smtp_port}, encryption: {smtp}}}",
        }
        fields.update({key: str(value) for key, value in overrides.items()})
        head, *rest = fields.items()
        return "\n".join([f"  - {head[0]}: {head[1]}"] + [f"    {key}: {value}" for key, value in rest]) + "\n"


@pytest.fixture
def new_account(mail_servers: MailServers, monkeypatch: pytest.MonkeyPatch):
    """Make a fresh mailbox (``local`` prefixes the local part, e.g. to trigger a rejection)."""

    def make(local: str = "user", *, register: bool = True) -> ServerAccount:
        number = next(_account_numbers)
        address = f"{local}{number}-{os.getpid()}@example.com"
        password = "pw-" + secrets.token_hex(12)
        env_name = f"MAILOPS_TEST_PASSWORD_{number}"
        if register:
            mail_servers.users.add(address, password)
        monkeypatch.setenv(env_name, password)
        return ServerAccount(address, password, env_name)

    return make


@pytest.fixture
def new_oauth_account(mail_servers: MailServers):
    """Make a fresh mailbox without a password, for a user of the identity provider; returns the address."""

    def make(local: str = "oauth") -> str:
        address = f"{local}{next(_account_numbers)}-{os.getpid()}@example.com"
        mail_servers.users.add_oauth(address)
        return address

    return make


@pytest.fixture
def engine_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mail_servers: MailServers):
    """A working directory with its own state store that trusts the test servers' certificate."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILOPS_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("MAILOPS_CA_FILE", str(mail_servers.cert))
    monkeypatch.setenv("MAILOPS_CONFIG_DIR", "config")
    monkeypatch.setenv("MAILOPS_LOCK_WAIT", "0.5")
    monkeypatch.setenv("MAILOPS_CONNECT_TIMEOUT", "3")
    monkeypatch.setenv("MAILOPS_COMMAND_TIMEOUT", "5")
    return tmp_path


def spec_files(tmp_path: Path, accounts_yaml: str, *, policies: str = "", projects: str = "") -> Path:
    """Write a spec whose default sender is the first account."""
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    first = accounts_yaml.split("address: ", 1)[1].split("\n", 1)[0].strip()
    (config / "accounts.yaml").write_text(f"# the accounts\naccounts:\n{accounts_yaml}{projects}", encoding="utf-8")
    (config / "defaults.yaml").write_text(
        f"defaults:\n  email: {first}\n  sender_name: Test\nqueues: [support]\n{OAUTH_APPS}{policies}", encoding="utf-8"
    )
    return config


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server for the state store, started once per session."""
    root = Path(tempfile.mkdtemp(prefix="mailops-postgres-"))
    root.chmod(0o755)
    server = Postgres(root)
    yield server.start()
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


# --- Hypothesis profiles ------------------------------------------------------------
# "ci" (the default): a fixed seed, so every run checks the same examples. "long": a
# fresh seed and many more examples, for local use: `pytest --hypothesis-profile=long`
# or HYPOTHESIS_PROFILE=long. Neither keeps an example database in the work tree; a
# failure prints a @reproduce_failure blob instead.

from hypothesis import HealthCheck  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

hypothesis_settings.register_profile(
    "ci",
    max_examples=500,
    derandomize=True,
    database=None,
    deadline=None,  # the fuzz test bounds each example's time itself
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
hypothesis_settings.register_profile(
    "long", parent=hypothesis_settings.get_profile("ci"), max_examples=20_000, derandomize=False
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
