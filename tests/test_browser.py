"""The report, JupyterLab and `mailops console` in a real browser: Debian's Chromium, driven by Playwright.

Playwright cannot download a browser here (and must not: never `playwright install`); it drives
/usr/lib/chromium/chromium, which `make test` installs. Every page opens in a browser context whose
network guard lets through only 127.0.0.1, ``file:``, ``data:`` and ``blob:``, aborts anything else,
and records every request, so a test can assert where the page went. The screenshots land in the
test's temporary ``reports/`` directory: look at them when a test fails (or to see what a reader sees).

Chromium, Jupyter, IPython and matplotlib write into ``HOME``, ``TMPDIR`` and their own directories:
those are temporary directories here, never the home directory of whoever runs the tests.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import re
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psutil
import pytest
from playwright.sync_api import Browser, Page, Request, Route, WebSocket, expect, sync_playwright

from mailops.notebook.console import NOTEBOOKS, free_port
from mailops.outbox import analysis
from mailops.outbox.charts import FAILED_COLOUR, RATE_COLOUR
from mailops.report import Period
from mailops.state import StateStore
from tests import test_notebooks
from tests.conftest import MailServers, ServerAccount
from tests.servers import HOST
from tests.test_notebooks import INFO, SHOP, TEAM, World, write_outbox
from tests.test_send import applied, run, sender_fault

CHROMIUM = Path("/usr/lib/chromium/chromium")
WAIT_MS = 60_000  # a page that takes longer hangs; the machine is slow, not that slow
SERVER_START = 120.0  # seconds for JupyterLab to answer
# Voilà's page template asks a CDN for Font Awesome; the guard aborts it and the page works without.
FONT_AWESOME = re.compile(r"https://cdn\.jsdelivr\.net/npm/(font-awesome|@fortawesome/fontawesome-free)@")
# JupyterLab's execution indicator says "idle" too early (Run All then does nothing): ready is a connected,
# idle kernel of a ready session of the notebook in front.
KERNEL_READY = """() => {
    const widget = window.jupyterapp?.shell.currentWidget, kernel = widget?.sessionContext?.session?.kernel;
    return !!(widget?.sessionContext?.isReady && kernel?.connectionStatus === 'connected' && kernel?.status === 'idle');
}"""

T = TypeVar("T")

world = test_notebooks.world  # the notebooks' spec (alice; SHOP, INFO, and HIDDEN that only bob sees), env, dirs


# --- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_dirs() -> Iterator[dict[str, str]]:
    """HOME, TMPDIR and the Jupyter, IPython and matplotlib directories, each a fresh temporary directory."""
    root = Path(tempfile.mkdtemp(prefix="mailops-browser-"))
    names = ("HOME", "TMPDIR", "IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR")
    dirs = {name: str(root / name.lower()) for name in (*names, "MPLCONFIGDIR")}
    for path in dirs.values():
        Path(path).mkdir()
    yield dirs
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(private_dirs: dict[str, str]) -> Iterator[Browser]:
    """Headless Chromium, once for this module.

    Not once per session: while Playwright's sync API is open it marks the main thread's event loop
    as running, and every later test that calls ``asyncio.run`` (the engine does) would fail."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"Chromium is not installed ({CHROMIUM} is missing): `make test` installs the Debian package "
            "`chromium` (or: apt-get install -y chromium). Never `playwright install`."
        )
    # The Playwright driver makes Chromium's profile under its TMPDIR and passes its environment on.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in private_dirs.items():
            patch.setenv(name, value)
        playwright = sync_playwright().start()
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
    expect.set_options(timeout=WAIT_MS)  # its default, 5 s, is shorter than a kernel's start here
    yield launched
    launched.close()
    playwright.stop()


@dataclass
class Traffic:
    """What a page asked for: every request and WebSocket, and the requests the guard aborted."""

    requests: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)

    def outside(self) -> list[str]:
        """The requests that went (or would have gone) anywhere but this machine and the page's own file."""
        return [url for url in self.requests if not is_local(url)]


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("file", "data", "blob") or parts.hostname == HOST


@pytest.fixture
def guarded(browser: Browser) -> Iterator[tuple[Page, Traffic]]:
    """A page in a fresh context whose network stays on 127.0.0.1 (and file:, data:, blob:), recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    traffic = Traffic()

    def guard(route: Route) -> None:
        if is_local(route.request.url):
            route.continue_()
        else:
            traffic.aborted.append(route.request.url)
            route.abort()

    def on_request(request: Request) -> None:
        traffic.requests.append(request.url)

    def on_websocket(websocket: WebSocket) -> None:
        traffic.websockets.append(websocket.url)

    context.route("**/*", guard)
    context.on("request", on_request)
    context.on("page", lambda page: page.on("websocket", on_websocket))  # a tab a link opens, too
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    yield page, traffic
    context.close()


def beside_the_browser(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` on a thread of its own: mailops runs its event loop with ``asyncio.run``,
    which refuses to start on this thread while Playwright's sync API holds it (see `browser`)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args, **kwargs).result()


def screenshot(page: Page, directory: Path, name: str) -> Path:
    """A full-page screenshot into ``directory`` (made when missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# --- a. the report ------------------------------------------------------------------------------


def test_the_report_draws_its_charts_and_headline_offline(
    engine_env: Path,
    mail_servers: MailServers,
    new_account: Callable[..., ServerAccount],
    guarded: tuple[Page, Traffic],
    private_dirs: dict[str, str],
) -> None:
    """Mails sent and refused through the test SMTP server, `mailops report`, the page opened from disk."""
    page, traffic = guarded
    shop, info = new_account(), new_account()
    projects = f"projects:\n  SHOP: {{email: {shop.address}}}\n  INFO: {{email: {info.address}}}\n"
    beside_the_browser(applied, engine_env, mail_servers, [shop, info], projects=projects)
    received = [new_account().address for _ in range(3)]
    mails = [  # (project, sender, recipient, the server's fault for the sender)
        ("SHOP", shop, received[0], None),
        ("SHOP", shop, received[1], None),
        ("INFO", info, received[2], None),
        ("SHOP", shop, "unknown-buyer@kunde.example", None),  # 550 5.1.1 at RCPT
        ("INFO", info, "unknown-dealer@handel.example", None),
        ("SHOP", shop, received[0], "spam"),  # 554 5.7.1 after DATA
        ("INFO", info, received[1], "refuse"),  # 553 5.1.8 at MAIL
    ]
    for project, sender, to, fault in mails:
        with sender_fault(mail_servers, sender, fault):
            sent = beside_the_browser(
                run, "--as", "alice", "send", "--project", project, "--to", to, "--subject", "Order", "--body", "Hi"
            )
        assert sent.exit_code == (0 if fault is None and not to.startswith("unknown") else 1), sent.output

    reports = engine_env / "reports"
    made = subprocess.run(
        [sys.executable, "-m", "mailops", "--as", "alice", "report", "--out", str(reports)],
        env={**os.environ, **private_dirs},
        cwd=engine_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    report = Path(made.stdout.strip())
    assert report.parent == reports and re.fullmatch(r"outbox-\d{4}-\d{2}-\d{2}\.html", report.name)

    page.goto(report.as_uri())
    shot = screenshot(page, reports, "report")

    # The headline as the analysis functions give it, for the period the page names (30 days up to its date).
    last = dt.date.fromisoformat(report.stem.removeprefix("outbox-"))
    span = Period(last - dt.timedelta(days=29), last)
    store = StateStore.open(os.environ["MAILOPS_STATE_URL"])
    (start, end), (before_start, before_end) = span.bounds(), span.previous().bounds()
    figures = analysis.headline(
        analysis.load_store(store, since=start, until=end),
        analysis.load_store(store, since=before_start, until=before_end),
    )
    assert (figures.sent, figures.failed) == (3, 4)  # counted by hand from the mails above
    shown = {
        key: (page.locator(f"#{key}").inner_text(), page.locator(f"#{key}").get_attribute("data-value"))
        for key in ("sent", "failed", "failure-rate", "change")
    }
    assert shown["sent"] == (f"{figures.sent:,}", str(figures.sent))
    assert shown["failed"] == (f"{figures.failed:,}", str(figures.failed))
    assert figures.rate is not None
    assert shown["failure-rate"] == (f"{figures.rate:.1%}", repr(figures.rate))
    assert figures.change is None and shown["change"] == ("—", "")  # nothing in the period before

    # Every chart is drawn: an inline SVG with a size, and marks in the data's colours (bars, or the rate's line
    # and points), each with an extent on the page.
    charts = page.evaluate(
        """colours => [...document.querySelectorAll('figure.chart')].map(figure => {
            const svg = figure.querySelector('svg'), box = svg?.getBoundingClientRect();
            const marks = svg ? [...svg.querySelectorAll('path, rect, use, polyline, polygon')].filter(mark => {
                const style = getComputedStyle(mark), extent = mark.getBBox();
                const coloured = colours.includes(style.fill) || colours.includes(style.stroke);
                return coloured && (extent.width > 0 || extent.height > 0);
            }) : [];
            return {label: figure.getAttribute('aria-label'), width: box?.width ?? 0, height: box?.height ?? 0,
                    marks: marks.length, text: svg?.textContent ?? ''};
        })""",
        [css_rgb(FAILED_COLOUR), css_rgb(RATE_COLOUR)],
    )
    assert [chart["label"] for chart in charts] == [
        "Failed mails by error class",
        "Failure rate by day",
        "Recipient domains with the most failed mails",
        "Failed mails by account",
    ]
    for chart in charts:
        assert chart["width"] > 100 and chart["height"] > 50, chart
        assert chart["marks"] > 0, f"{chart['label']}: nothing drawn in the data's colours"
        assert "no data" not in chart["text"], chart["label"]

    assert traffic.requests and traffic.requests[0] == report.as_uri()  # the recording works
    assert [url for url in traffic.requests if not url.startswith("file:")] == [], "the report loaded something"
    assert traffic.aborted == []
    assert shot.stat().st_size > 0


def css_rgb(colour: str) -> str:
    """``#rrggbb`` as the browser's computed style writes it."""
    red, green, blue = (int(colour[index : index + 2], 16) for index in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


# --- b. JupyterLab --------------------------------------------------------------------------------


@dataclass
class Lab:
    url: str
    token: str
    notebooks: Path


@pytest.fixture
def jupyter_lab(world: World, private_dirs: dict[str, str]) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 with a token, over a copy of outbox_errors.ipynb and the notebooks' outbox."""
    home = Path(tempfile.mkdtemp(prefix="lab-", dir=world.root))
    notebooks = home / "notebooks"
    notebooks.mkdir()
    shutil.copyfile(test_notebooks.NOTEBOOKS / "outbox_errors.ipynb", notebooks / "outbox_errors.ipynb")  # Lab saves
    state = f"sqlite:///{home / 'outbox.db'}"
    write_outbox(StateStore.open(state, create=True))
    # Otherwise a news toast asks whether to fetch news, over the widgets.
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}', encoding="utf-8"
    )
    token, port = secrets.token_hex(16), free_port()
    env = {**world.env, "TMPDIR": private_dirs["TMPDIR"], "MAILOPS_STATE_URL": state, "JUPYTER_TOKEN": token}
    log = (home / "lab.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={notebooks}",
         f"--LabApp.workspaces_dir={home / 'workspaces'}", f"--LabApp.user_settings_dir={home / 'settings'}",
         "--LabApp.expose_app_in_browser=True"],
        env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://{HOST}:{port}"
    try:
        wait_for_http(f"{url}/api/status?token={token}", process, home / "lab.log")
        yield Lab(url, token, notebooks)
    finally:
        stop(process)
        log.close()


def wait_for_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``url`` answers 200; fails with the server's log when it exits first or does not answer in time."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + SERVER_START
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer (exit code {process.poll()}):\n{log.read_text(errors='replace')[-3000:]}")


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    """Stop a server (its kernels with it) and return its exit code; killed when it takes over 30 s."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def test_jupyterlab_runs_the_outbox_notebook_and_shows_the_explorer(
    jupyter_lab: Lab, guarded: tuple[Page, Traffic], tmp_path: Path
) -> None:
    page, traffic = guarded
    page.goto(f"{jupyter_lab.url}/lab/tree/outbox_errors.ipynb?token={jupyter_lab.token}&reset")
    page.wait_for_function(KERNEL_READY, timeout=WAIT_MS)
    # Not awaited: the command's promise once hung for minutes, and evaluate() has no timeout of its own.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

    dropdowns = page.locator(".jupyter-widgets.widget-dropdown select")
    expect(dropdowns).to_have_count(5)  # account, project, class, status, and the attempt to show
    account_options = dropdowns.first.evaluate("select => [...select.options].map(option => option.value)")
    assert account_options == ["all accounts", INFO, SHOP]  # not HIDDEN: only bob may see it
    # The four charts: SVG images, loaded and with a size.
    page.wait_for_function(
        """() => [...document.querySelectorAll('.widget-output img, img.widget-image')]
                   .filter(image => image.complete && image.naturalWidth > 0).length >= 4""",
        timeout=WAIT_MS,
    )
    expect(page.locator(".jupyter-widgets.widget-html").filter(has_text="5 mails: 2 sent, 3 failed")).to_have_count(1)
    # The last cell's printed summary: the whole notebook ran.
    expect(page.locator(".jp-OutputArea-output pre").filter(has_text="recipients_failed | 2 | 66.7%")).to_be_visible()
    page.set_viewport_size({"width": 1280, "height": 2000})  # Lab scrolls inside its panel: make it tall enough
    page.locator("img.widget-image").last.scroll_into_view_if_needed()
    screenshot(page, tmp_path / "reports", "jupyterlab-outbox_errors")
    assert traffic.outside() == [] and traffic.aborted == []
    assert all(is_local(url) for url in traffic.websockets)


# --- c. mailops console ---------------------------------------------------------------------------


def test_the_console_connects_a_manual_account_through_its_form(
    world: World,
    mail_servers: MailServers,
    guarded: tuple[Page, Traffic],
    private_dirs: dict[str, str],
    tmp_path: Path,
) -> None:
    landing, traffic = guarded
    address, password = f"console-{os.getpid()}@example.com", "pw-" + secrets.token_hex(8)
    mail_servers.users.add(address, password)
    # The "browser" the console starts records what it was given: everyone can read a command line.
    opened_with = tmp_path / "browser-arguments"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {opened_with}.tmp && mv {opened_with}.tmp {opened_with}\n')
    browser.chmod(0o700)
    env = {
        **world.env,
        "TMPDIR": private_dirs["TMPDIR"],
        "MAILOPS_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "BROWSER": str(browser),
    }
    port = free_port()
    log = (tmp_path / "console.log").open("w")
    console = subprocess.Popen(
        [sys.executable, "-m", "mailops", "console", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    started: list[psutil.Process] = []
    try:
        assert console.stdout is not None
        # Printed once Voilà answers; the console gives up (and exits) by itself if it never does.
        printed = console.stdout.readline()
        log_text = (tmp_path / "console.log").read_text(errors="replace")
        assert printed.startswith(f"mailops console: http://{HOST}:{port}/?token="), printed + log_text
        url = printed.split(": ", 1)[1].strip()
        token = url.split("?token=", 1)[1]
        started = psutil.Process(console.pid).children(recursive=True)  # Voilà; the page's kernel comes later
        command_lines = [" ".join(child.cmdline()) for child in started]
        assert command_lines and all(token not in line for line in command_lines)  # `ps` shows no secret
        deadline = time.monotonic() + 30
        while not opened_with.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        [argument] = opened_with.read_text(encoding="utf-8").splitlines()
        assert token not in argument and argument.startswith("file:///")
        opening = Path(argument.removeprefix("file://"))
        assert opening.stat().st_mode & 0o777 == 0o600
        assert f'content="0; url={url}"' in opening.read_text(encoding="utf-8")
        assert status_without_token(port, "/voila/render/connect_account.ipynb") in (302, 403)

        landing.goto(url)  # the landing page lists the console's notebooks
        expect(landing.locator("a", has_text=".ipynb")).to_have_text(sorted(NOTEBOOKS))
        with landing.context.expect_page() as opened:  # Voilà opens a notebook in a new tab
            landing.get_by_role("link", name="connect_account.ipynb").click()
        page = opened.value
        expect(page.get_by_label("Provider", exact=True)).to_be_visible()  # Voilà shows it once the notebook ran
        # The environment asked for an unattended run (MAILOPS_NOTEBOOK_RUN=yes): at a desk nothing is pressed.
        expect(page.locator(".mailops-result")).to_have_count(0)
        fill_the_manual_form(page, mail_servers, address, password)
        page.get_by_role("button", name="Connect").click()

        outcome = page.locator(".mailops-result").filter(has_text=f"{address} works")
        expect(outcome).to_contain_text(f"✔ {address} works: IMAP and SMTP log in; test mail sent to {address}.")
        notes = page.locator(".mailops-result").all_inner_texts()
        assert any("environment variable CONSOLE_" in note and "kernel only" in note for note in notes), notes
        expect(page.get_by_label("Password", exact=True)).to_have_value("")  # the widget let go of it
        expect(page.locator(".mailops-snippet")).to_contain_text(f"address: {address}")
        page.set_viewport_size({"width": 1280, "height": 1400})  # Voilà scrolls inside its panel: the whole form
        screenshot(page, tmp_path / "reports", "console-connect")
        subjects = [message["Subject"] for message in mail_servers.users.messages(address)]
        assert subjects == [f"mailops test mail for {address}"]

        # A Microsoft account: the device code shows with Cancel beside Connect; Cancel ends the wait at once.
        cancel = page.get_by_role("button", name="Cancel")
        expect(cancel).to_be_hidden()
        page.get_by_label("Address", exact=True).fill(TEAM)  # declared as a Microsoft account: the provider follows
        expect(page.get_by_label("Provider", exact=True)).to_have_value("Microsoft 365")
        page.get_by_role("button", name="Connect").click()
        expect(page.get_by_text("enter the code")).to_be_visible()
        expect(cancel).to_be_visible()
        expect(page.get_by_role("button", name="Connect")).to_be_disabled()
        screenshot(page, tmp_path / "reports", "console-device-code")
        cancel.click()
        cancelled = page.locator(".mailops-result").filter(has_text="cancelled")
        expect(cancelled).to_have_text(f"• The sign-in as {TEAM} was cancelled: nothing was stored.")
        expect(cancel).to_be_hidden()
        expect(page.get_by_role("button", name="Connect")).to_be_enabled()
        screenshot(page, tmp_path / "reports", "console-cancelled")
        assert [state.address for state in StateStore.open(env["MAILOPS_STATE_URL"]).accounts()] == []

        assert [url for url in traffic.aborted if not FONT_AWESOME.match(url)] == []
        assert [url for url in traffic.outside() if url not in traffic.aborted] == []
        assert traffic.websockets and all(is_local(url) for url in traffic.websockets)

        # SIGTERM (as a service manager stops it): Voilà, its kernels and the notebooks' copy are gone, exit 0.
        started = psutil.Process(console.pid).children(recursive=True)
        [voila] = [process for process in started if "voila" in process.cmdline()]
        app_dir = Path(voila.cmdline()[voila.cmdline().index("voila") + 1])
        assert app_dir.is_dir() and len(started) >= 2  # Voilà and the page's kernel
        assert stop(console) == 0
        _, alive = psutil.wait_procs(started, timeout=30)
        assert alive == []
        assert not app_dir.exists()
    finally:
        stop(console)  # the console stops Voilà and its kernels itself; whatever is left after 30 s is killed
        for process in psutil.wait_procs(started, timeout=30)[1]:
            process.kill()
        log.close()


def status_without_token(port: int, path: str) -> int:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def fill_the_manual_form(page: Page, mail_servers: MailServers, address: str, password: str) -> None:
    """Provider IMAP-SMTP, the address, the test servers (IMAP ssl, SMTP starttls) and the password, as typed."""
    imap_port, smtp_port = mail_servers.ports("ssl", "starttls")
    page.get_by_label("Provider", exact=True).select_option(label="IMAP-SMTP")
    page.get_by_label("Address", exact=True).fill(address)
    for name, port, encryption in (("IMAP", imap_port, "ssl"), ("SMTP", smtp_port, "starttls")):
        row = page.locator(".widget-hbox").filter(has=page.get_by_label(f"{name} server", exact=True))
        row.get_by_label(f"{name} server", exact=True).fill(HOST)
        port_field = row.get_by_label("port", exact=True)
        port_field.fill(str(port))
        port_field.press("Tab")  # a number field sends its value on change, not on each key
        row.get_by_label("encryption", exact=True).select_option(encryption)
    expect(page.get_by_label("Login name", exact=True)).to_have_value(address)  # the kernel filled it in
    page.get_by_label("Password", exact=True).fill(password)


def test_the_console_refuses_a_port_in_use(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith("MAILOPS_")}
    with socket.create_server((HOST, 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "mailops", "--as", "alice", "console", "--port", str(port), "--no-browser"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"Error: cannot listen on {HOST}:{port}: in use; choose another --port\n"
