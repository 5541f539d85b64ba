"""The exceptions mailops raises, and the located diagnostic they carry."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

# Control characters (C0, DEL, C1, line and paragraph separators) in text shown on a
# terminal would move the cursor, retitle the window or fake further lines; the bidirectional
# controls would show `invoice \u202egpj.exe` as `invoice exe.jpg`.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``), safe for a terminal or a log."""
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def quoted(value: object, limit: int = 60) -> str:
    """A value from the user's input as a message quotes it: printable, and shortened when long."""
    text = printable(str(value))
    return f"`{text if len(text) <= limit else text[: limit - 1] + '…'}`"


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One finding about the spec, pointing at the place in a file it is about."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{printable(self.file)}:{self.line}:{self.column}"
        message = printable(self.message)
        return f"{where}: {printable(self.path)}: {message}" if self.path else f"{where}: {message}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class MailopsError(Exception):
    """Base of every error mailops reports to its user."""


class SpecError(MailopsError):
    """The spec is invalid; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: list[Diagnostic]):
        self.problems = sorted(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the spec")
