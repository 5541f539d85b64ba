"""What the transport needs to reach and log in to a server, independent of the spec models."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    encryption: str  # ssl | starttls | none


@dataclass(frozen=True)
class Credential:
    """A login. The secret is kept out of ``repr`` so it cannot leak into logs or tracebacks."""

    username: str
    password: str | None = field(default=None, repr=False)
    oauth_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 15.0
    command: float = 30.0


@cache
def client_tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Verifying TLS context: the system's CAs plus ``ca_file`` (for self-hosted servers)."""
    import ssl  # here: a plan, which connects nowhere, should not pay for it

    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context
