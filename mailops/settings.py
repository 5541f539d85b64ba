"""Runtime settings: ``MAILOPS_*`` environment variables and an optional ``.env`` file.

These say *how* mailops runs (where the spec and the state live, who acts, how long
to wait). *What* it manages lives in the YAML spec, never here. Every default lives
here once.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailops.errors import MailopsError

DEFAULT_STATE_URL = "sqlite:///.mailops/state.db"
ENV_FILE = ".env"


class SettingsError(MailopsError):
    """A setting is unusable; the message names the variable (or the .env file) and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAILOPS_", env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore"
    )

    config_dir: Path = Field(Path("config"), description="Directory holding accounts.yaml and defaults.yaml.")
    state_url: str = Field(
        DEFAULT_STATE_URL,
        description="SQLAlchemy URL of the live state store (SQLite file by default, PostgreSQL for teams).",
    )
    user: str | None = Field(None, description="The acting employee, for visibility checks.")
    connect_timeout: float = Field(15.0, gt=0, description="Seconds to wait for a TCP/TLS connection.")
    command_timeout: float = Field(30.0, gt=0, description="Seconds to wait for one IMAP/SMTP command.")
    delivery_wait: float = Field(
        20.0, gt=0, description="Seconds `test-mail --wait` waits for the mail to arrive in the inbox."
    )
    concurrency: int = Field(20, ge=1, le=512, description="Accounts verified at the same time during apply.")
    lock_wait: float = Field(5.0, ge=0, description="Seconds an apply waits for another apply's lock before failing.")
    ca_file: Path | None = Field(
        None, description="Extra CA bundle (PEM) that is trusted besides the system's, for self-hosted servers."
    )

    @field_validator("ca_file")
    @classmethod
    def _ca_file_holds_certificates(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        import ssl

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
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            name = "MAILOPS_" + "_".join(str(part) for part in error["loc"]).upper()
            lines.append(f"setting {name}: {str(error['msg']).removeprefix('Value error, ')}")
        raise SettingsError("\n".join(lines)) from None
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{ENV_FILE} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
