"""The `mailops` command line: thin shells over the library API.

One module per command group; each keeps its heavy imports (pydantic, ruamel.yaml,
SQLAlchemy, rich) inside the command, so that `mailops --help` starts fast. They are
imported in the order `mailops --help` lists their commands.
"""

# isort: skip_file
import os

# mailops uses no pydantic plugins; looking for them reads the metadata of every installed
# distribution, tens of milliseconds on each start. The command and what it starts (the
# console's kernels) inherit it; a user's own setting wins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from mailops.cli import spec  # noqa: F401 - each module registers its commands
from mailops.cli import reconcile  # noqa: F401
from mailops.cli import accounts  # noqa: F401
from mailops.cli import outbox  # noqa: F401
from mailops.cli import oauth  # noqa: F401
from mailops.cli import report  # noqa: F401
from mailops.cli import worker  # noqa: F401
from mailops.cli import archive  # noqa: F401
from mailops.cli import console  # noqa: F401
from mailops.cli import demo  # noqa: F401
from mailops.cli.app import app
from mailops.bulk import skip_collections_at_exit

skip_collections_at_exit()  # a command's process ends when the command does

__all__ = ["app"]
