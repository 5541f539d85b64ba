"""Runtime settings: ``MAILOPS_*`` environment variables and an optional ``.env`` file.

These say *how* mailops runs (where the spec and the state live, who acts, how long
to wait). *What* it manages lives in the YAML spec, never here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STATE_URL = "sqlite:///.mailops/state.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILOPS_", env_file=".env", env_file_encoding="utf-8", extra="ignore")

    config_dir: Path = Field(Path("config"), description="Directory holding accounts.yaml and defaults.yaml.")
    state_url: str = Field(
        DEFAULT_STATE_URL,
        description="SQLAlchemy URL of the live state store (SQLite file by default, PostgreSQL for teams).",
    )
    user: str | None = Field(None, description="The acting employee, for visibility checks.")
    connect_timeout: float = Field(15.0, gt=0, description="Seconds to wait for a TCP/TLS connection.")
    command_timeout: float = Field(30.0, gt=0, description="Seconds to wait for one IMAP/SMTP command.")
    concurrency: int = Field(20, ge=1, le=512, description="Accounts verified at the same time during apply.")
    lock_wait: float = Field(5.0, ge=0, description="Seconds an apply waits for another apply's lock before failing.")
    ca_file: Path | None = Field(
        None, description="Extra CA bundle (PEM) that is trusted besides the system's, for self-hosted servers."
    )


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit (e.g. command-line) values on top."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
