"""Signatures and greetings: the employee's details filled into the spec's text.

A line whose variables are all empty for the employee is dropped whole, so that
``Tel. {MITARBEITER_TELEFON}`` leaves no dangling ``Tel.`` for someone without a phone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from mailops.spec.models import TEMPLATE_VARIABLES, Employee

_VARIABLE = re.compile(r"\{(" + "|".join(re.escape(name) for name in TEMPLATE_VARIABLES) + r")\}")

# What each variable stands for, as an explanation names it.
FIELD_OF: Mapping[str, str] = {
    "MITARBEITER": "name",
    "MITARBEITER_TELEFON": "phone",
    "MITARBEITER_MOBIL": "mobile",
    "MITARBEITER_EMAIL": "e-mail address",
    "MITARBEITER_TELEFAX": "fax",
}


def variables_in(text: str) -> list[str]:
    """The variables ``text`` uses, in order of appearance."""
    return _VARIABLE.findall(text)


def values_of(employee: Employee) -> dict[str, str]:
    return {
        "MITARBEITER": employee.name,
        "MITARBEITER_TELEFON": employee.phone,
        "MITARBEITER_MOBIL": employee.mobile,
        "MITARBEITER_EMAIL": employee.email or "",
        "MITARBEITER_TELEFAX": employee.fax,
    }


@dataclass(frozen=True)
class Rendered:
    text: str
    dropped: tuple[tuple[str, tuple[str, ...]], ...]  # (line, the variables it lacked)


def render(text: str, values: Mapping[str, str]) -> Rendered:
    """``text`` with its variables filled; lines whose variables are all empty are dropped."""
    kept: list[str] = []
    dropped: list[tuple[str, tuple[str, ...]]] = []
    for line in text.split("\n"):
        names = _VARIABLE.findall(line)
        if names and not any(values.get(name, "").strip() for name in names):
            dropped.append((line, tuple(dict.fromkeys(names))))
            continue
        kept.append(_VARIABLE.sub(lambda match: values.get(match.group(1), ""), line))
    return Rendered("\n".join(kept).strip("\n"), tuple(dropped))
