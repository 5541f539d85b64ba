"""JSON Schema of the spec files, generated from the models.

Editors pick it up through the ``# yaml-language-server: $schema=`` modeline at the top
of both config files. Regenerate after changing a model::

    python -m mailops.spec.schema > schema/mailops.schema.json
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from mailops.spec.models import AccountsFile, DefaultsFile

SCHEMA_ID = "https://mailops.dev/schema/mailops.schema.json"


def spec_json_schema() -> dict[str, Any]:
    """One schema for both files: a document is either an accounts file or a defaults file."""
    schema = TypeAdapter(AccountsFile | DefaultsFile).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "mailops spec (config/accounts.yaml or config/defaults.yaml)",
        **schema,
    }


def render_schema() -> str:
    return json.dumps(spec_json_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render_schema(), end="")
