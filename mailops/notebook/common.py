"""What the notebook widgets share: loading settings and spec as the command line does, running a
slow step off the kernel's thread, and turning results into escaped HTML (and back into the text
a reader sees, for tests and for nbval).

Every text that came from a person, a spec file or a server is escaped before it goes into an
HTML widget: an address or a server's reply may hold ``<``, and the front end renders what the
kernel sends.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any, Literal

from mailops.errors import MailopsError, SpecError

if TYPE_CHECKING:
    from mailops.engine.visibility import Actor
    from mailops.settings import Settings
    from mailops.spec import LoadedSpec
    from mailops.state import LiveAccounts
    from mailops.state.store import StateStore

OK_COLOUR = "#1b7f3b"
ERROR_COLOUR = "#b3261e"
NOTE_COLOUR = "#555555"
_URL = re.compile(r"https?://[^\s<>\"']+")


# --- settings, spec, state: the same library pieces the command line loads ----------------------


def load_settings_once(settings: Settings | None) -> Settings:
    """``settings``, or the settings from the environment (``MAILOPS_*`` and ``.env``), as the CLI reads them."""
    if settings is not None:
        return settings
    from mailops.settings import load_settings

    return load_settings()


@dataclass(frozen=True)
class Context:
    """The settings and the spec as they are now; a widget makes one per action, so edits of the
    YAML files between two clicks count."""

    settings: Settings
    loaded: LoadedSpec

    @classmethod
    def load(cls, settings: Settings) -> Context:
        from mailops.spec import load_spec

        return cls(settings, load_spec(settings.config_dir))

    def actor(self) -> Actor:
        """Who acts: MAILOPS_USER, or the administrator where the policy allows (as on the command line)."""
        from mailops.engine.visibility import acting

        return acting(self.loaded.spec, self.settings.user)

    def store(self, *, create: bool) -> StateStore:
        from mailops.state.store import StateStore

        return StateStore.open(self.settings.state_url, create=create)

    def live(self) -> LiveAccounts:
        """The live accounts for reading only: nothing is created, migrated or locked."""
        from mailops.state import read_live_state

        return read_live_state(self.settings.state_url)


# --- running a slow step without blocking the kernel -------------------------------------------


class Task:
    """One background job at a time, on a daemon thread.

    A consent waits minutes for a person; logins and test mails take seconds. On the kernel's
    own thread they would freeze every widget (and the engine's ``asyncio.run`` cannot run
    there at all: the kernel's event loop is running). ``on_crash`` shows an unexpected error
    in the widget; :meth:`wait` raises it again, so a test does not miss it.
    """

    def __init__(self, on_crash: Callable[[BaseException], None], controls: Iterable[Any] = ()) -> None:
        self._on_crash = on_crash
        self._controls = tuple(controls)  # buttons disabled while a job runs
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, work: Callable[[], None], *, name: str) -> bool:
        """Run ``work`` in the background; False (and nothing started) while another job runs."""
        if self.running:
            return False
        self._crash = None
        for control in self._controls:
            control.disabled = True
        self._thread = threading.Thread(target=self._run, args=(work,), name=f"mailops-{name}", daemon=True)
        self._thread.start()
        return True

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - shown in the widget, raised again by wait()
            self._crash = exc
            self._on_crash(exc)
        finally:
            for control in self._controls:
                control.disabled = False

    def wait(self, timeout: float | None = None) -> None:
        """Until the job is done; TimeoutError when it still runs after ``timeout`` seconds."""
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"still running after {timeout:g} s")
        if self._crash is not None:
            raise self._crash


# --- HTML ----------------------------------------------------------------------------------------


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def linkified(text: str) -> str:
    """``text`` escaped, each http(s) URL in it a link that opens in a new tab."""
    parts: list[str] = []
    position = 0
    for match in _URL.finditer(text):
        url = match.group().rstrip(".,;:)")
        parts.append(escape(text[position : match.start()]))
        parts.append(f'<a href="{escape(url)}" target="_blank" rel="noopener noreferrer">{escape(url)}</a>')
        position = match.start() + len(url)
    parts.append(escape(text[position:]))
    return "".join(parts)


Kind = Literal["ok", "error", "note"]
_SIGNS = {"ok": ("✔", OK_COLOUR), "error": ("✘", ERROR_COLOUR), "note": ("•", NOTE_COLOUR)}


def message(kind: Kind, headline: str, details: Iterable[tuple[str, str]] = ()) -> str:
    """A result as HTML: a signed headline, then labelled lines (``("Remedy", "...")``); all of it escaped."""
    sign, colour = _SIGNS[kind]
    lines = [f'<div style="color:{colour};font-weight:bold">{sign} {escape(headline)}</div>']
    for label, text in details:
        lines.append(f"<div><b>{escape(label)}:</b> {escape(text)}</div>")
    return '<div class="mailops-result">' + "".join(lines) + "</div>"


def error_message(exc: BaseException, headline: str = "") -> str:
    """A mailops error as HTML: a spec's problems one per line, anything else its message."""
    if isinstance(exc, SpecError):
        details = [("Problem", str(problem)) for problem in exc.problems]
        return message("error", headline or str(exc), details)
    if isinstance(exc, MailopsError):
        text = str(exc)
        return message("error", f"{headline}: {text}" if headline else text)
    return message("error", f"Unexpected error ({type(exc).__name__}): {exc}")


CELL = "padding:0.1em 0.5em;vertical-align:top;text-align:left;white-space:nowrap"
WRAPPED_CELL = "padding:0.1em 0.5em;vertical-align:top;text-align:left;white-space:normal;min-width:18em"


def table(headers: Iterable[str], rows: Iterable[Iterable[object]], *, wrapped: Iterable[int] = ()) -> str:
    """An HTML table of escaped text (a cell that is already HTML is passed as :class:`Markup`).

    Cells stay on one line (an address or a time cut in two is hard to read) and a wide table
    scrolls sideways; the columns in ``wrapped`` (long texts such as a remedy) wrap instead."""
    headers = list(headers)
    wide = set(wrapped)
    styles = [f' style="{WRAPPED_CELL if index in wide else CELL}"' for index in range(len(headers))]
    head = "".join(f"<th{style}>{escape(header)}</th>" for style, header in zip(styles, headers, strict=True))
    body = "".join(
        "<tr>" + "".join(f"<td{style}>{_cell(cell)}</td>" for style, cell in zip(styles, row, strict=True)) + "</tr>"
        for row in rows
    )
    return (
        '<div style="overflow-x:auto"><table class="mailops-table" style="border-collapse:collapse">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _cell(value: object) -> str:
    return value if isinstance(value, Markup) else escape(value)


class Markup(str):
    """Text that is HTML already (made here from escaped parts): :func:`table` does not escape it again."""


def preformatted(text: str) -> str:
    # The widget's own line height would double-space a <pre> in Voilà.
    style = "white-space:pre-wrap;margin:0.3em 0;line-height:1.3;font-family:var(--jp-code-font-family,monospace)"
    return f'<pre style="{style}">{escape(text)}</pre>'


# --- the text a reader sees ----------------------------------------------------------------------

_BLOCKS = frozenset({"div", "p", "pre", "tr", "li", "h1", "h2", "h3", "h4", "table", "thead", "tbody", "dl", "dt"})


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.cells = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("td", "th", "dd"):
            if self.cells:
                self.parts.append(" | ")
            self.cells += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCKS:
            self._break()
            self.cells = 0

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCKS:
            self._break()
            self.cells = 0

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def _break(self) -> None:
        if self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append("\n")


def visible_text(source: Any) -> str:
    """The text a reader sees in an HTML widget (or in an HTML string): tags dropped, entities decoded,
    blocks and table rows on lines of their own, table cells separated by `` | ``."""
    value = source if isinstance(source, str) else getattr(source, "value", "")
    parser = _Text()
    parser.feed(str(value))
    parser.close()
    lines = "".join(parser.parts).split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def sized(width: str = "28em", label: str = "9em") -> dict[str, Any]:
    """Keyword arguments for a labelled input of ``width`` (a fresh layout: widgets must not share one)."""
    import ipywidgets as widgets

    return {"layout": widgets.Layout(width=width), "style": {"description_width": label}}


def shown(widget: Any, visible: bool) -> None:
    """Show or hide a widget (it keeps its place and its value)."""
    widget.layout.display = None if visible else "none"
