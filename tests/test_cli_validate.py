"""`mailops validate` and `mailops --version` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from mailops import __version__
from mailops.cli import app
from tests.conftest import REPO, VALID_ACCOUNTS

runner = CliRunner()


def test_validate_accepts_the_example_and_lists_its_accounts(example_config) -> None:
    result = runner.invoke(app, ["validate", "-c", str(example_config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    for address in ("support@example.com", "sales@example.org", "team@example.com", "info@web.de", "shop@example.net"):
        assert address in result.stdout
    assert "config/accounts.yaml:46:5: accounts[3]: filled imap, smtp from preset web.de" in result.stdout
    assert "config is valid: 5 account(s), 3 project link(s), 2 employee(s)." in result.stdout
    assert result.stderr == ""


def test_validate_reports_problems_on_stderr_and_exits_1(write_config) -> None:
    config = write_config(
        accounts=VALID_ACCOUNTS.replace("port: 993", "port: 0").replace("{env: A_PASSWORD}", "sesame")
    )
    result = runner.invoke(app, ["validate", "-c", str(config)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "config/accounts.yaml:6:15: accounts[0].password: a literal password is not allowed in the spec; "
        "reference it as {env: VARIABLE} or {file: PATH}",
        "config/accounts.yaml:7:42: accounts[0].imap.port: input should be greater than or equal to 1",
        "2 problem(s) found; nothing was changed.",
    ]
    assert "sesame" not in result.stderr


def test_validate_json_lists_problems_with_their_location(write_config) -> None:
    config = write_config(accounts=VALID_ACCOUNTS.replace("encryption: ssl", "encryption: tls"))
    result = runner.invoke(app, ["validate", "-c", str(config), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == [
        {
            "file": "config/accounts.yaml",
            "line": 7,
            "column": 59,
            "path": "accounts[0].imap.encryption",
            "message": "input should be 'ssl', 'starttls' or 'none'",
        }
    ]


def test_validate_json_of_a_valid_spec_is_an_empty_list(write_config) -> None:
    result = runner.invoke(app, ["validate", "-c", str(write_config()), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def test_config_dir_comes_from_the_environment(write_config) -> None:
    config = write_config()
    result = runner.invoke(app, ["validate"], env={"MAILOPS_CONFIG_DIR": str(config)})
    assert result.exit_code == 0, result.stderr


def test_version_and_help_run_as_a_real_console_script() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "mailops")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"mailops {__version__}"
    helped = subprocess.run([script, "--help"], capture_output=True, text=True, check=True, cwd=REPO)
    assert "validate" in helped.stdout


def test_help_does_not_import_the_heavy_modules() -> None:
    heavy = "{'pydantic', 'ruamel', 'email_validator', 'sqlalchemy', 'mailops'}"
    code = f"import sys; import mailops.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = eval(loaded.stdout)  # a printed list of module names
    light = {"mailops", "mailops.bulk"}  # the package's version, and the standard library's gc at exit
    assert [m for m in modules if m not in light and not m.startswith("mailops.cli")] == []
