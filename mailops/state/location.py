"""Where the state lives: reading a state URL without SQLAlchemy, and hiding its password.

A state URL may carry a password in any of the forms SQLAlchemy and libpq accept
(``user:secret@host``, ``?password=secret``, ``password=secret`` key/value DSNs).
Every message that shows a URL, or an error text that may quote it, goes through
:func:`redact` first.
"""

from __future__ import annotations

import re
from pathlib import Path

HIDDEN = "***"
_KEY_VALUE_SECRET = re.compile(
    r"(?P<key>\b[\w.-]*(?:password|passwd|pwd|secret|token)\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,]*)",
    re.IGNORECASE,
)


def redact(text: str, *secrets: str) -> str:
    """``text`` with every password in a URL or DSN (and each of ``secrets``) replaced by ``***``."""
    text = _redact_userinfo(text)
    text = _KEY_VALUE_SECRET.sub(lambda m: m["key"] + HIDDEN, text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, HIDDEN)
    return text


def _redact_userinfo(text: str) -> str:
    # scheme://user:password@host — the password runs to the last "@" (a host has none; when a
    # later part holds one, more is hidden than needed, never less).
    out = []
    for part in re.split(r"(\s+)", text):
        scheme_end = part.find("://")
        at = part.rfind("@")
        if scheme_end >= 0 and at > scheme_end:
            colon = part.find(":", scheme_end + 3, at)
            if colon >= 0:
                part = part[: colon + 1] + HIDDEN + part[at:]
        out.append(part)
    return "".join(out)


def passwords_of(url: str) -> list[str]:
    """The password in ``url``'s user info, and its parts between ``@`` signs, to hide wherever an error repeats them.

    ``user:pa@ss@host`` is parsed differently by different drivers (one takes ``pa`` as the
    password and ``ss@host`` as the host), so each part is a secret of its own.
    """
    scheme_end = url.find("://")
    at = url.rfind("@")
    if scheme_end < 0 or at <= scheme_end:
        return []
    colon = url.find(":", scheme_end + 3, at)
    if colon < 0:
        return []
    password = url[colon + 1 : at]
    return sorted({password, *password.split("@")} - {""}, key=len, reverse=True)


_SQLITE = re.compile(r"sqlite(?:\+pysqlite)?://(?P<rest>.*)\Z", re.DOTALL)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (``sqlite:///relative.db``, ``sqlite:////abs.db``); else None.

    In-memory databases and URLs with options are left to SQLAlchemy (None).
    """
    match = _SQLITE.match(url)
    if match is None:
        return None
    rest = match["rest"]
    if not rest.startswith("/") or "?" in rest:
        return None
    path = rest[1:]
    if path in ("", ":memory:"):
        return None
    return Path(path)
