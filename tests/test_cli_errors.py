"""Bad settings and unusable state stores give one clear line and exit 1, never a traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from mailops.cli import app
from tests.servers import free_port

runner = CliRunner()


def test_a_bad_setting_names_its_variable(write_config) -> None:
    result = runner.invoke(app, ["plan", "-c", str(write_config())], env={"MAILOPS_CONCURRENCY": "many"})
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: setting MAILOPS_CONCURRENCY: Input should be a valid integer, unable to parse string as an integer\n"
    )


def test_an_unreachable_state_store_hides_the_password(write_config) -> None:
    url = f"postgresql+psycopg://ops:hunter2-db@127.0.0.1:{free_port()}/mailops"
    result = runner.invoke(app, ["--state", url, "plan", "-c", str(write_config())])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot open the state store postgresql+psycopg://ops:***@127.0.0.1:")
    assert "hunter2" not in result.output


def test_an_unwritable_plan_file_is_reported(write_config, tmp_path) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    result = runner.invoke(app, ["--state", state, "plan", "-c", str(write_config()), "--out", "missing/dir/plan.json"])
    assert result.exit_code == 1
    assert "Error: cannot write missing/dir/plan.json: No such file or directory" in result.stderr
