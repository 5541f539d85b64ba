"""`mailops console`: the connect, test-mail and outbox notebooks served by Voilà as a small web app.

One Voilà server on 127.0.0.1 serves a private copy of the three notebooks; its landing page
(Voilà's classic tree) lists them, and each opens as a page of widgets without code. What the kernels
need comes through the environment, never the command line (which every user of the machine
can read with `ps`):

- the settings this process resolved (``MAILOPS_*``, ``.env`` and ``--state``/``--as`` included),
  each path made absolute: a kernel runs in the copy's directory, not where `mailops` was started;
- a fresh token, which Voilà's identity provider reads from ``JUPYTER_TOKEN``, so another user of
  the machine cannot open the console on the loopback address and act as the admin.

``MAILOPS_NOTEBOOK_RUN`` is dropped: at a desk, the person presses the buttons. Voilà runs in its
own session, so a Ctrl-C in the terminal reaches this process only, which then stops Voilà with
SIGTERM; Voilà shuts its kernels down before it exits. On Linux, Voilà also gets a SIGTERM when
this process dies without a chance to stop it (SIGKILL).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from mailops.errors import MailopsError

if TYPE_CHECKING:
    from mailops.settings import Settings

HOST = "127.0.0.1"
# The notebooks of the console, as the landing page lists them; plan_apply stays with the ops engineers.
NOTEBOOKS = ("connect_account.ipynb", "send_test_mail.ipynb", "outbox_errors.ipynb")
# A static file: polling a notebook's page instead would execute the notebook in a kernel each time.
READY_PATH = "/voila/static/voila.js"
READY_TIMEOUT = 120.0  # seconds for Voilà to answer; it takes a few on a slow machine
STOP_TIMEOUT = 15.0  # seconds Voilà gets to shut its kernels down after SIGTERM
UNATTENDED = "MAILOPS_NOTEBOOK_RUN"


class ConsoleError(MailopsError):
    """The console cannot start: the port is taken, the notebooks are missing, Voilà failed."""


def notebooks_dir() -> Path:
    """The notebooks the console serves: package data, so that an installed mailops has them too. In a source
    tree ``pages`` is a link to notebooks/, where nbval runs them."""
    return Path(__file__).parent / "pages"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on just now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def check_port(port: int) -> None:
    """:class:`ConsoleError` unless ``port`` can be listened on at 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            reason = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConsoleError(f"cannot listen on {HOST}:{port}: {reason}; choose another --port") from None


def settings_environment(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``MAILOPS_*`` variables that give a kernel the same settings, wherever it runs."""
    values: dict[str, str] = {
        "MAILOPS_CONFIG_DIR": str(settings.config_dir.absolute()),
        "MAILOPS_STATE_URL": absolute_state_url(settings.state_url),
        "MAILOPS_CONNECT_TIMEOUT": repr(settings.connect_timeout),
        "MAILOPS_COMMAND_TIMEOUT": repr(settings.command_timeout),
        "MAILOPS_DELIVERY_WAIT": repr(settings.delivery_wait),
        "MAILOPS_CONCURRENCY": str(settings.concurrency),
        "MAILOPS_LOCK_WAIT": repr(settings.lock_wait),
    }
    if settings.user is not None:
        values["MAILOPS_USER"] = settings.user
    if settings.ca_file is not None:
        values["MAILOPS_CA_FILE"] = str(settings.ca_file.absolute())
    if settings.message_dir is not None:
        values["MAILOPS_MESSAGE_DIR"] = str(settings.message_dir.absolute())
    if settings.secret_key is not None:
        key = settings.secret_key.get_secret_value()
        if key.startswith("file:"):
            key = "file:" + str(Path(key.removeprefix("file:")).absolute())
        values["MAILOPS_SECRET_KEY"] = key
    return values


def absolute_state_url(url: str) -> str:
    """``url`` with a relative SQLite file made absolute (from the current directory); any other URL as it is."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # the state store reports it, with the password hidden, when a widget opens it
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return url
    if Path(database).is_absolute():
        return url
    return parsed.set(database=str(Path(database).absolute())).render_as_string(hide_password=False)


def console_environment(settings: Settings, token: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of the Voilà server and so of its kernels: ``environ`` with the settings and the token."""
    env = {name: value for name, value in environ.items() if name != UNATTENDED}
    env.update(settings_environment(settings))
    env["JUPYTER_TOKEN"] = token
    env.pop("JUPYTER_TOKEN_FILE", None)  # would be read instead of the token when JUPYTER_TOKEN were empty
    return env


def voila_command(app_dir: Path, port: int) -> list[str]:
    """The command line of the Voilà server: no secret in it (the token comes from JUPYTER_TOKEN)."""
    return [
        sys.executable,
        "-m",
        "voila",
        str(app_dir),
        "--no-browser",
        "--token",  # ask for a token: Voilà disables authentication otherwise
        "--classic-tree",  # the landing page as plain HTML links, shown at once (the default one is an app)
        f"--port={port}",
        "--Voila.port_retries=0",  # the port asked for, or an error; never a neighbour silently
        f"--Voila.ip={HOST}",
    ]


@dataclass
class Console:
    """A running console: its Voilà server, the URL to open (token included), and the notebooks' copy."""

    process: subprocess.Popen[bytes]
    port: int
    token: str
    app_dir: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The landing page, with the token that logs the browser in."""
        return f"{self.base_url}/?token={self.token}"

    def opening_page(self) -> Path:
        """A page, readable by this user only, that sends a browser on to :attr:`url`: a browser started with the
        URL itself would show the token in its command line, to every user of the machine, for as long as it runs
        (Jupyter opens its servers so too)."""
        import html

        from mailops.fileio import atomic_write

        page = self.app_dir / "open.html"
        target = html.escape(self.url, quote=True)
        atomic_write(
            page,
            f'<!DOCTYPE html>\n<meta charset="utf-8">\n<meta http-equiv="refresh" content="0; url={target}">\n'
            f'<title>mailops console</title>\n<p><a href="{target}">Open the mailops console</a></p>\n',
            mode=0o600,
        )
        return page

    def wait(self) -> int:
        """Until Voilà exits; its exit code."""
        return self.process.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop Voilà (SIGTERM: it shuts its kernels down first; SIGKILL after ``timeout``) and remove the copy."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                except KeyboardInterrupt:  # a second Ctrl-C: now, and leave no Voilà behind
                    self.process.kill()
                    self.process.wait()
                    raise
        finally:
            shutil.rmtree(self.app_dir, ignore_errors=True)

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_console(
    settings: Settings,
    *,
    port: int | None = None,
    notebooks: Path | None = None,
    environ: Mapping[str, str] | None = None,
    output: IO[bytes] | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> Console:
    """Start Voilà with the console's notebooks on 127.0.0.1:``port`` (a free one when None) and return once
    it answers. ``output`` receives Voilà's log (default: this process's stderr). :class:`ConsoleError`
    when the port is taken, a notebook is missing, or Voilà exits or does not answer in time."""
    source = notebooks or notebooks_dir()
    missing = [name for name in NOTEBOOKS if not (source / name).is_file()]
    if missing:
        raise ConsoleError(f"the console's notebooks are missing in {source}: {', '.join(missing)}")
    if port is None:
        port = free_port()
    else:
        check_port(port)
    token = secrets.token_urlsafe(32)
    env = console_environment(settings, token, os.environ if environ is None else environ)
    app_dir = Path(tempfile.mkdtemp(prefix="mailops-console-"))  # 0700: the kernels' working directory too
    try:
        for name in NOTEBOOKS:
            shutil.copyfile(source / name, app_dir / name)
        process = subprocess.Popen(
            voila_command(app_dir, port),
            env=env,
            cwd=app_dir,
            stdin=subprocess.DEVNULL,
            stdout=output if output is not None else 2,  # fd 2: the log stays off stdout, which has the URL
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us only; we stop Voilà in order
            preexec_fn=_terminated_with(os.getpid()) if sys.platform == "linux" else None,
        )
    except BaseException:
        shutil.rmtree(app_dir, ignore_errors=True)
        raise
    console = Console(process, port, token, app_dir)
    try:
        wait_until_ready(console, ready_timeout)
    except BaseException:  # a Ctrl-C while waiting too
        console.stop()
        raise
    return console


def _terminated_with(parent: int) -> Callable[[], None]:
    """For Voilà's child process, before it runs: a SIGTERM when ``parent`` dies, even of a SIGKILL that
    leaves no chance to stop it (Linux's PR_SET_PDEATHSIG); else it would hold the port, orphaned."""

    def arrange() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call above
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


def wait_until_ready(console: Console, timeout: float) -> None:
    """Until Voilà serves its static files; :class:`ConsoleError` if it exits first or takes over ``timeout``."""
    # Straight to 127.0.0.1: a proxy from the environment must not see (or break) the request.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        code = console.process.poll()
        if code is not None:
            raise ConsoleError(f"Voilà exited with code {code} before it was ready (see its log)")
        try:
            with opener.open(console.base_url + READY_PATH, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise ConsoleError(f"Voilà did not answer on {console.base_url} within {timeout:g} s")
        time.sleep(0.2)
