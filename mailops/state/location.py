"""Where the state lives: reading a state URL without SQLAlchemy, and never showing its password.

A state URL may carry a password in any of the forms SQLAlchemy and libpq accept
(``user:secret@host``, ``?password=secret``, ``password=secret`` key/value DSNs).
:func:`shown_url` is the URL as every message shows it; :func:`redact` cleans an error
text that may quote the URL or its password. A URL whose password would be read
differently by different parsers (an unencoded ``@`` or space) is refused up front by
:func:`check_url`, so that no driver ever echoes a part of it.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from mailops.state.schema import StateError

HIDDEN = "***"
_KEY_VALUE_SECRET = re.compile(
    r"(?P<key>\b[\w.-]*(?:password|passwd|pwd|secret|token)\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&]*)",
    re.IGNORECASE,
)
_USERINFO_SECRET = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?=@)")


def shown_url(url: str) -> str:
    """``url`` as a message may show it: every password replaced by ``***``."""
    scheme, separator, rest = url.partition("://")
    if separator:
        at = rest.rfind("@")  # a host holds no "@": everything before the last one is user info
        if at >= 0:
            user, colon, _password = rest[:at].partition(":")
            rest = f"{user}:{HIDDEN}{rest[at:]}" if colon else rest
        url = f"{scheme}://{rest}"
    elif "@" in url and "=" not in url:
        url = HIDDEN + url[url.rfind("@") :]  # user:password@host without a scheme
    return _KEY_VALUE_SECRET.sub(lambda match: match["key"] + HIDDEN, url)


def redact(text: str, *secrets: str) -> str:
    """An error text with every password it may quote (in a URL, a DSN, or as given) replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, HIDDEN)
    text = _USERINFO_SECRET.sub(lambda match: match["head"] + HIDDEN, text)
    return _KEY_VALUE_SECRET.sub(lambda match: match["key"] + HIDDEN, text)


def secrets_of(url: str) -> list[str]:
    """The password in ``url`` as written and decoded, to hide wherever an error repeats it."""
    scheme, separator, rest = url.partition("://")
    at = rest.rfind("@")
    if not separator or at < 0:
        return []
    _user, colon, password = rest[:at].partition(":")
    return [secret for secret in {password, unquote(password)} if colon and secret]


def check_url(url: str) -> None:
    """Refuse a URL that parsers would split differently (and might echo a part of its password)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return
    userinfo = rest[: rest.rfind("@")] if "@" in rest else ""
    if "@" in userinfo or any(character.isspace() for character in userinfo):
        raise StateError(
            f"the state URL {shown_url(url)} has an `@` or a space in its user name or password; "
            "percent-encode them (`@` is %40, a space %20)"
        )


_SQLITE = re.compile(r"sqlite(?:\+pysqlite)?://(?P<rest>[^?]*)(?:\?.*)?\Z", re.DOTALL)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (``sqlite:///relative.db``, ``sqlite:////abs.db``), else None.

    The path is percent-decoded and options after ``?`` are set aside, as SQLAlchemy
    does, so both read the same file. In-memory databases give None.
    """
    match = _SQLITE.match(url)
    if match is None or not match["rest"].startswith("/"):
        return None
    path = unquote(match["rest"][1:])
    if path in ("", ":memory:") or path.startswith("file:"):
        return None
    return Path(path)
