"""The exceptions mailops raises, and the located diagnostic they carry."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One finding about the spec, pointing at the place in a file it is about."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class MailopsError(Exception):
    """Base of every error mailops reports to its user."""


class SpecError(MailopsError):
    """The spec is invalid; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: list[Diagnostic]):
        self.problems = sorted(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the spec")
