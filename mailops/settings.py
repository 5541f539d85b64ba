"""Runtime settings: ``MAILOPS_*`` environment variables and an optional ``.env`` file.

These say *how* mailops runs (where the spec and the state live, who acts, how long
to wait). *What* it manages lives in the YAML spec, never here. Every default lives
here once.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailops.errors import MailopsError
from mailops.fileio import FileReadError, read_bytes, read_text, regular_file_problem

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

DEFAULT_STATE_URL = "sqlite:///.mailops/state.db"
ENV_FILE = ".env"
MAX_ENV_FILE_BYTES = 1024 * 1024
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def known_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``, or ValueError: also for a name that is a directory of the zone
    database (``America``), too long for a file name, or path-like."""
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # not found is a KeyError, a path-like name a ValueError
        raise ValueError(f"unknown time zone {name!r}") from None


class SettingsError(MailopsError):
    """A setting is unusable; the message names the variable (or the .env file) and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        # allow_inf_nan: `nan` is no number of seconds (it passed every bound but was reported as too large).
        env_prefix="MAILOPS_",
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        allow_inf_nan=False,
    )

    config_dir: Path = Field(Path("config"), description="Directory holding accounts.yaml and defaults.yaml.")
    state_url: str = Field(
        DEFAULT_STATE_URL,
        description="SQLAlchemy URL of the live state store (SQLite file by default, PostgreSQL for teams).",
    )
    user: str | None = Field(None, description="The acting employee, for visibility checks.")
    # Every wait is bounded: an infinite timeout would let one silent server stall an apply forever.
    connect_timeout: float = Field(15.0, gt=0, le=3600, description="Seconds to wait for a TCP/TLS connection.")
    command_timeout: float = Field(30.0, gt=0, le=3600, description="Seconds to wait for one IMAP/SMTP command.")
    delivery_wait: float = Field(
        20.0, gt=0, le=3600, description="Seconds `test-mail --wait` waits for the mail to arrive in the inbox."
    )
    concurrency: int = Field(20, ge=1, le=512, description="Accounts verified at the same time during apply.")
    lock_wait: float = Field(
        5.0, ge=0, le=3600, description="Seconds an apply waits for another apply's lock before failing."
    )
    worker_lease: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="Seconds a worker's lease on its accounts lasts (`mailops run`); the worker renews it every "
        "third of that. A worker that dies loses its accounts to the others after this long.",
    )
    ca_file: Path | None = Field(
        None, description="Extra CA bundle (PEM) that is trusted besides the system's, for self-hosted servers."
    )
    message_dir: Path | None = Field(
        None,
        description="Where imported mail is kept, one .eml file per message named by its SHA-256; "
        "default: `messages` beside a SQLite state file, else .mailops/messages.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Key that encrypts the stored OAuth tokens (`mailops keygen`): the key, or file:PATH.",
    )
    timezone: str = Field(
        "Europe/Berlin",
        description="The business's time zone (IANA name): whose calendar day `once_per_day_per_sender` counts, "
        "and the default of `report --timezone` and `outbox import --timezone`.",
    )

    def token_key(self) -> str | None:
        """The key itself, read from its file when the setting says file:PATH."""
        if self.secret_key is None:
            return None
        value = self.secret_key.get_secret_value()
        if not value.startswith("file:"):
            return value.strip()
        try:
            return read_bytes(value.removeprefix("file:"), limit=1024, what="key file").decode("ascii").strip()
        except FileReadError as exc:
            raise SettingsError(f"MAILOPS_SECRET_KEY: {exc}") from None
        except UnicodeDecodeError:
            raise SettingsError(
                "MAILOPS_SECRET_KEY: the key file holds no key (make one with `mailops keygen`)"
            ) from None

    @field_validator("config_dir", "state_url", "user", "ca_file", "timezone", mode="before")
    @classmethod
    def _single_line(cls, value: object) -> object:
        if isinstance(value, str) and _CONTROL.search(value):
            raise ValueError("holds a control character (a line break?)")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            known_zone(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a known time zone; use an IANA name such as Europe/Berlin") from None
        return value

    @property
    def zone(self) -> dt.tzinfo:
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)

    @field_validator("ca_file")
    @classmethod
    def _ca_file_holds_certificates(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        import ssl

        problem = regular_file_problem(value)  # a FIFO would block the TLS library's read forever
        if problem is not None:
            raise ValueError(f"{value} {problem}")
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(value))
        except FileNotFoundError:
            raise ValueError(f"{value} not found") from None
        except ssl.SSLError:
            raise ValueError(f"cannot use {value} as CA bundle: it holds no PEM certificate") from None
        except OSError as exc:
            raise ValueError(f"cannot use {value} as CA bundle: {exc.strerror or exc}") from None
        return value


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit (e.g. command-line) values on top.

    Raises :class:`SettingsError` with one line per unusable setting.
    """
    _check_env_file(Path(ENV_FILE))
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            name = "MAILOPS_" + "_".join(str(part) for part in error["loc"]).upper()
            lines.append(f"setting {name}: {str(error['msg']).removeprefix('Value error, ')}")
        raise SettingsError("\n".join(lines)) from None
    except OSError as exc:  # the .env file vanished or changed under us
        raise SettingsError(f"cannot read {ENV_FILE}: {exc.strerror or exc}") from None


def _check_env_file(path: Path) -> None:
    """A `.env` that is there must be a readable UTF-8 file of `NAME=value` lines.

    pydantic-settings reads it with python-dotenv, which skips a line it cannot parse
    with only a warning, so a broken `MAILOPS_STATE_URL` line would silently fall back to
    the default store. It is parsed here first, and each unparsable line is an error.
    """
    if not path.exists() and not path.is_symlink():
        return
    from dotenv.parser import parse_stream

    try:
        text = read_text(path, limit=MAX_ENV_FILE_BYTES, what="settings file")
    except FileReadError as exc:
        raise SettingsError(str(exc)) from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise SettingsError(
                f"{path}:{binding.original.line}: cannot read this line; write it as NAME=value "
                "(quote a value with spaces, and close every quote)"
            )
