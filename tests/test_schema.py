"""The JSON Schemas in `schema/`: one per spec file, up to date, and precise in third-party validators."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from mailops.spec.models import AccountsFile
from mailops.spec.schema import SCHEMA_FILES, render_schema, spec_json_schema
from tests.conftest import EXAMPLE_CONFIG, REPO

SCHEMA_DIR = REPO / "schema"
# Each example file and the schema it names on its first line.
EXAMPLES = {"accounts.yaml": "accounts.schema.json", "defaults.yaml": "defaults.schema.json"}
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def _load_schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_committed_schema_is_up_to_date(name: str) -> None:
    committed = (SCHEMA_DIR / name).read_text(encoding="utf-8")
    assert committed == render_schema(name), "regenerate: python -m mailops.spec.schema --out-dir schema"


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_each_schema_names_itself(name: str) -> None:
    schema = _load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://mailops.dev/schema/{name}"
    assert schema["title"] == f"mailops config/{name.removesuffix('.schema.json')}.yaml"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_only_the_per_file_schemas_are_committed() -> None:
    assert sorted(path.name for path in SCHEMA_DIR.iterdir()) == sorted(SCHEMA_FILES)


@pytest.mark.parametrize("example, schema_name", sorted(EXAMPLES.items()))
def test_example_references_its_own_schema_and_validates(example: str, schema_name: str) -> None:
    text = (EXAMPLE_CONFIG / example).read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"# yaml-language-server: $schema=../schema/{schema_name}"
    document = json.loads(json.dumps(YAML(typ="safe").load(text), default=str))
    validator = jsonschema.Draft202012Validator(_load_schema(schema_name), format_checker=jsonschema.FormatChecker())
    assert list(validator.iter_errors(document)) == []


def test_schema_rejects_a_typo_like_the_loader_does() -> None:
    broken = {"accounts": [{"address": "a@example.com", "provider": "google", "archive": {"retention_day": 3}}]}
    with pytest.raises(jsonschema.ValidationError, match="'retention_day' was unexpected"):
        jsonschema.validate(broken, _load_schema("accounts.schema.json"))


@pytest.mark.parametrize(
    "account",
    [
        {"imap": None},
        {"imap": {"host": "h", "port": 993, "encryption": "ssl"}},
        {"imap": {"host": "h", "port": 993, "encryption": "tls"}},
        {"imap": {"host": "h", "port": 993}},
        {"imap": "mail.example.com"},
        {"password": None},
        {"password": {"env": "P"}},
        {"password": {"envv": "P"}},
        {"display_name": None},
        {"display_name": ""},
        {"display_name": 3},
        {"ticket": {"import_since": None}},
        {"ticket": {"import_since": 20260101}},
    ],
)
def test_nullable_fields_accept_what_the_generated_schema_accepts(account: dict) -> None:
    """Writing `anyOf: [X, null]` as X with `type: [..., null]` changes the messages, not the verdicts."""
    document = {"accounts": [{"address": "a@example.com", "provider": "manual", **account}]}
    generated = jsonschema.Draft202012Validator(AccountsFile.model_json_schema())
    published = jsonschema.Draft202012Validator(spec_json_schema("accounts.schema.json"))
    assert published.is_valid(document) == generated.is_valid(document)


def _check_jsonschema(schema_name: str, *instances: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # The schema is a local file and the 2020-12 metaschema ships with `jsonschema`, so no
    # network is needed; a proxy that refuses every connection makes sure none is used.
    env = {
        **os.environ,
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    env.pop("no_proxy", None)
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--color", "never", "--schemafile", SCHEMA_DIR / schema_name, *instances],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = result.stdout.splitlines()
    assert lines[0] == "Schema validation errors were encountered.", result.stdout + result.stderr
    return [line.strip() for line in lines[1:] if line.strip()]


@pytest.mark.parametrize("example, schema_name", sorted(EXAMPLES.items()))
def test_check_jsonschema_accepts_the_examples(example: str, schema_name: str, tmp_path: Path) -> None:
    result = _check_jsonschema(schema_name, EXAMPLE_CONFIG / example, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok -- validation done"


def test_check_jsonschema_reports_a_wrong_encryption_where_it_is(tmp_path: Path) -> None:
    text = (EXAMPLE_CONFIG / "accounts.yaml").read_text(encoding="utf-8")
    assert text.count("encryption: ssl") == 1  # the IMAP server of shop@example.net, accounts[4]
    broken = tmp_path / "accounts.yaml"
    broken.write_text(text.replace("encryption: ssl", "encryption: tls"), encoding="utf-8")
    result = _check_jsonschema("accounts.schema.json", broken, tmp_path=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    # The first (and only) error names the key and the allowed values, not "'accounts' was unexpected".
    assert _errors(result) == [
        f"{broken}::$.accounts[4].imap.encryption: 'tls' is not one of ['ssl', 'starttls', 'none']"
    ]


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (
            "max_delete_fraction: 0.34",
            'max_delete_fraction: "x"',
            "$.policies.max_delete_fraction: 'x' is not of type 'number'",
        ),
        (
            "allow_delete: false",
            "allow_delete: false\n  alow_delete: true",
            "$.policies: Additional properties are not allowed ('alow_delete' was unexpected)",
        ),
    ],
)
def test_check_jsonschema_reports_a_wrong_policy_where_it_is(old: str, new: str, expected: str, tmp_path: Path) -> None:
    text = (EXAMPLE_CONFIG / "defaults.yaml").read_text(encoding="utf-8")
    assert text.count(old) == 1
    broken = tmp_path / "defaults.yaml"
    broken.write_text(text.replace(old, new), encoding="utf-8")
    result = _check_jsonschema("defaults.schema.json", broken, tmp_path=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert _errors(result) == [f"{broken}::{expected}"]


def test_main_writes_both_schemas_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "accounts.schema.json").write_text("stale\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mailops.spec.schema", "--out-dir", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == sorted(SCHEMA_FILES)  # no temp files left
    for name in SCHEMA_FILES:
        assert (out / name).read_text(encoding="utf-8") == render_schema(name)


def test_main_refuses_a_missing_out_dir(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailops.spec.schema", "--out-dir", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "is not a directory" in result.stderr
    assert not (tmp_path / "missing").exists()
