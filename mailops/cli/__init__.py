"""The `mailops` command line: thin shells over the library API.

One module per command group; each keeps its heavy imports (pydantic, ruamel.yaml,
SQLAlchemy, rich) inside the command, so that `mailops --help` starts fast.
"""

from mailops.cli import accounts, demo, reconcile, spec  # noqa: F401 - registers the commands
from mailops.cli.app import app

__all__ = ["app"]
