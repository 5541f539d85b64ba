"""What a wheel of mailops carries besides the code: built from a copy of the source tree, as pip builds it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from mailops.notebook.console import NOTEBOOKS, notebooks_dir

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_notebooks_the_console_serves(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, source / name)
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "mailops", source / "mailops", symlinks=True, ignore=ignored)
    shutil.copytree(ROOT / "notebooks", source / "notebooks")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path / "wheel"), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "wheel").glob("mailops-*.whl")
    inside = notebooks_dir().relative_to(ROOT).as_posix()  # where an installed mailops looks for them
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        carried = {name: archive.read(f"{inside}/{name}") for name in NOTEBOOKS if f"{inside}/{name}" in names}
    assert carried == {name: (ROOT / "notebooks" / name).read_bytes() for name in NOTEBOOKS}
