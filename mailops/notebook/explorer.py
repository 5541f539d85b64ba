"""`OutboxExplorer`: why outgoing mail failed, over the outbox analysis (`mailops.outbox.analysis`).

Filters narrow the outbox; a headline with the summary by error class, four charts
(`mailops.outbox.charts`) and a paged table of the attempts follow them, and the filtered rows
can be exported to CSV. The outbox is the state store's, limited to the accounts the acting user
may see (as `mailops outbox list` does), or a frame handed in (an export, a seed log).

A state store is never loaded whole: the explorer opens on counts that the database makes
(`StoreOutbox`), a filter counts again, and a page of the table reads only the rows it shows,
so that a million attempts open in about a second and a redraw stays well under half a second.
A frame handed in is filtered with one boolean mask (`filter_mask`); its newest-first order is
sorted once. Either way only the page shown is formatted, and a chart is drawn again only when its
summary changed (a small cache keyed by the summary's content).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np

from mailops.errors import MailopsError
from mailops.notebook.common import (
    Context,
    Markup,
    error_message,
    escape,
    load_settings_once,
    message,
    sized,
    table,
)

if TYPE_CHECKING:
    import numpy.typing as npt
    import pandas as pd
    from matplotlib.figure import Figure

    from mailops.outbox.analysis import StoreOutbox, Summaries
    from mailops.settings import Settings

NO_PROJECT = ""  # the project filter's value for mails sent without a project (no project is named "")
MAX_DOMAIN_SUGGESTIONS = 200
CHART_CACHE = 64
SVG_NAMESPACES = 'xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
_TABLE_COLUMNS = ("#", "time", "account", "project", "status", "to", "cc", "bcc", "subject", "class", "remedy")


class OutboxExplorer:
    """Explore the outbox log: set the filters (``account``, ``project``, ``error_class``, ``status``,
    ``domain``, ``start``, ``end``; None or empty means all), and ``summary``, the four charts
    (``class_chart``, ``rate_chart``, ``domain_chart``, ``account_chart``) and the ``table``
    page (``page``) follow. ``selected`` picks an attempt of the page for ``detail``;
    ``export_button`` writes the filtered rows to ``export_path`` as CSV.

    Without ``frame`` the outbox is the state store's (``settings``: where it is; default: the
    environment's, as for the command line), as it was when the explorer opened."""

    def __init__(
        self,
        frame: pd.DataFrame | None = None,
        *,
        settings: Settings | None = None,
        page_size: int = 20,
        timezone: str | None = None,
    ) -> None:
        from mailops.bulk import cycle_collector_paused

        # Opening builds frames, widgets and matplotlib's modules: many objects and no garbage, which the cycle
        # collector would otherwise walk again and again (a fifth of the time to the first charts).
        with cycle_collector_paused():
            from mailops.outbox.analysis import DEFAULT_TIMEZONE, empty_frame

            self.timezone = timezone or DEFAULT_TIMEZONE
            self.page_size = page_size
            self.notice = widgets.HTML()
            self._source: _FrameSource | _StoreSource
            try:
                self._source = self._open(frame, load_settings_once(settings))
                # matplotlib (about a second), imported while the database still counts the store's outbox (which it
                # does without Python's lock); then the counts are waited for.
                import mailops.outbox.charts  # noqa: F401

                self._source.wait()
            except MailopsError as exc:
                self._source = _FrameSource(empty_frame(), self.timezone)
                self.notice.value = error_message(exc, "No outbox to explore")
            self._attempts = 0
            self._rows: pd.DataFrame | None = None  # the page shown
            self._charts: OrderedDict[tuple[str, str], bytes] = OrderedDict()
            self._figures: dict[str, Figure] = {}  # each chart's last drawing
            self._drawing = False

            choices = self._source
            self.account = widgets.Dropdown(
                options=_options(choices.accounts(), "all accounts"), description="Account", **sized("22em", "7em")
            )
            projects = _options(choices.projects(), "all projects") + [("(no project)", NO_PROJECT)]
            self.project = widgets.Dropdown(options=projects, description="Project", **sized("22em", "7em"))
            self.error_class = widgets.Dropdown(
                options=_options(choices.classes(), "all classes"), description="Class", **sized("22em", "7em")
            )
            self.status = widgets.Dropdown(
                options=_options(choices.statuses(), "all statuses"), description="Status", **sized("22em", "7em")
            )
            self.domain = widgets.Combobox(
                options=choices.domains(MAX_DOMAIN_SUGGESTIONS),
                placeholder="all recipient domains",
                description="Domain",
                ensure_option=False,
                continuous_update=False,  # a redraw per keystroke would be wasted work
                **sized("22em", "7em"),
            )
            self.start = widgets.DatePicker(description="From", **sized("22em", "7em"))
            self.end = widgets.DatePicker(description="To", **sized("22em", "7em"))
            self.summary = widgets.HTML()
            self.class_chart = _chart_image()
            self.rate_chart = _chart_image()
            self.domain_chart = _chart_image()
            self.account_chart = _chart_image()
            self.page = widgets.BoundedIntText(
                value=1, min=1, max=1, description="Page", layout=widgets.Layout(width="12em")
            )
            self.previous_button = widgets.Button(description="Newer", icon="arrow-left")
            self.next_button = widgets.Button(description="Older", icon="arrow-right")
            self.page_label = widgets.Label()
            self.table = widgets.HTML()
            self.selected = widgets.Dropdown(options=[], value=None, description="Attempt", **sized("22em", "7em"))
            self.detail = widgets.HTML()
            self.export_path = widgets.Text(value="outbox-filtered.csv", description="CSV file", **sized("22em", "7em"))
            self.export_button = widgets.Button(description="Export filtered rows", icon="download")
            self.export_outcome = widgets.HTML()

            filters = [self.account, self.project, self.error_class, self.status, self.domain, self.start, self.end]
            for control in filters:
                control.observe(lambda _change: self.redraw(), names="value")
            self.page.observe(lambda _change: self._draw_page(), names="value")
            self.previous_button.on_click(lambda _button: self._turn(-1))
            self.next_button.on_click(lambda _button: self._turn(+1))
            self.selected.observe(lambda _change: self._draw_detail(), names="value")
            self.export_button.on_click(lambda _button: self._export())
            self.view = widgets.VBox(
                [
                    widgets.HTML("<b>Outbox explorer</b>"),
                    self.notice,
                    widgets.HBox([widgets.VBox(filters[:4]), widgets.VBox(filters[4:])]),
                    self.summary,
                    widgets.GridBox(
                        [self.class_chart, self.rate_chart, self.domain_chart, self.account_chart],
                        layout=widgets.Layout(grid_template_columns="repeat(2, minmax(0, 1fr))"),
                    ),
                    widgets.HBox([self.previous_button, self.page, self.next_button, self.page_label]),
                    self.table,
                    self.selected,
                    self.detail,
                    widgets.HBox([self.export_path, self.export_button]),
                    self.export_outcome,
                ]
            )
            self.redraw()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.view._repr_mimebundle_(**kwargs)

    @property
    def rows(self) -> int:
        """How many attempts pass the filters."""
        return self._attempts

    # -- loading ------------------------------------------------------------------------------

    def _open(self, frame: pd.DataFrame | None, settings: Settings) -> _FrameSource | _StoreSource:
        """The outbox (or ``frame``) limited to the accounts the acting user may see."""
        from mailops.engine.visibility import visible_addresses
        from mailops.outbox.analysis import StoreOutbox, filter_frame

        context = Context.load(settings)
        actor = context.actor()
        store = context.store(create=False)
        visible = None
        if not actor.admin:
            visible = visible_addresses(context.loaded.spec, actor, store.accounts(include_deleted=True))
        if frame is None:
            return _StoreSource(StoreOutbox(store, accounts=visible, timezone=self.timezone))
        return _FrameSource(frame if visible is None else filter_frame(frame, accounts=visible), self.timezone)

    # -- drawing ------------------------------------------------------------------------------

    def _filters(self) -> dict[str, Any]:
        filters: dict[str, Any] = {}
        for name, control in (("accounts", self.account), ("classes", self.error_class), ("statuses", self.status)):
            if control.value is not None:
                filters[name] = [control.value]
        if self.project.value is not None:
            filters["projects"] = [None if self.project.value == NO_PROJECT else self.project.value]
        domain = str(self.domain.value or "").strip().lower()
        if domain:
            filters["domains"] = [domain]
        if self.start.value is not None:
            filters["start"] = self.start.value
        if self.end.value is not None:
            filters["end"] = self.end.value
        return filters

    def redraw(self) -> None:
        """Apply the filters: summary, charts and the first page of the table."""
        from mailops.outbox.charts import (
            failure_rate_by_day,
            failures_by_account,
            failures_by_class,
            failures_by_domain,
        )

        found = self._source.select(self._filters())
        self._attempts = found.attempts
        self.summary.value = _summary_html(found)
        self._chart(self.class_chart, "class", found.classes, failures_by_class)
        self._chart(self.rate_chart, "day", found.days, failure_rate_by_day)
        self._chart(self.domain_chart, "domain", found.domains, failures_by_domain)
        self._chart(self.account_chart, "account", found.accounts, failures_by_account)
        pages = max(1, -(-found.attempts // self.page_size))
        self._drawing = True  # one page drawing for the new filter, not one per trait change
        try:
            self.page.max = pages
            self.page.value = 1
        finally:
            self._drawing = False
        self._draw_page()

    def _chart(self, image: Any, name: str, summary: pd.DataFrame, draw: Any) -> None:
        from mailops.outbox.charts import svg

        key = (name, summary.to_json(date_format="iso"))
        data = self._charts.get(key)
        if data is None:
            # Drawn on the chart's previous figure: its axes and ticks stay, which halves the time of a chart.
            figure: Figure = draw(summary, figure=self._figures.get(name))
            self._figures[name] = figure
            # `svg` leaves out the namespaces, as HTML's parser adds them to an inline <svg>; an image
            # of its own needs them.
            data = svg(figure).replace("<svg ", f"<svg {SVG_NAMESPACES} ", 1).encode("utf-8")
            self._charts[key] = data
            if len(self._charts) > CHART_CACHE:
                self._charts.popitem(last=False)
        else:
            self._charts.move_to_end(key)
        if image.value != data:
            image.value = data

    def _turn(self, step: int) -> None:
        self.page.value = min(self.page.max, max(1, self.page.value + step))

    def _draw_page(self) -> None:
        if self._drawing:
            return
        from mailops.outbox.classify import remedy

        first = (self.page.value - 1) * self.page_size
        rows, numbers = self._source.page(first, self.page_size)
        self._rows = rows
        times = _local_times(rows["time"], self.timezone)
        body = []
        options: list[tuple[str, int]] = []
        for place, ((_, row), when, fallback) in enumerate(zip(rows.iterrows(), times, numbers, strict=True)):
            error_class = _text(row["class"])
            short = remedy(error_class).short if error_class else ""
            number = _text(row["id"]) or f"({fallback})"
            status = _text(row["status"])
            failed = status == "failed"
            status_cell = Markup(f'<span style="color:#b3261e">{escape(status)}</span>') if failed else status
            body.append(
                [
                    number,
                    when,
                    _text(row["account"]),
                    _text(row["project"]),
                    status_cell,
                    _text(row["to"]),
                    _text(row["cc"]),
                    _text(row["bcc"]),
                    _text(row["subject"]),
                    error_class,
                    short,
                ]
            )
            options.append((f"{number} {when} {_text(row['to'])}".strip(), place))
        self.table.value = table(_TABLE_COLUMNS, body, wrapped=[10]) if body else message("note", "No attempt.")
        total = self._attempts
        shown_to = min(total, first + self.page_size)
        self.page_label.value = f"{first + 1 if total else 0}–{shown_to} of {total:,} attempts"
        self.previous_button.disabled = self.page.value <= 1
        self.next_button.disabled = self.page.value >= self.page.max
        self.selected.options = options
        self.selected.value = None
        self.detail.value = ""

    def _draw_detail(self) -> None:
        from mailops.outbox.classify import remedy

        place = self.selected.value
        if place is None or self._rows is None:
            self.detail.value = ""
            return
        row = self._rows.iloc[int(place)]
        when = _local_times(self._rows["time"].iloc[[int(place)]], self.timezone)[0]
        fields: list[tuple[str, str]] = [
            ("id", _text(row["id"])),
            (f"time ({self.timezone})", when),
            ("source", _text(row["source"])),
            ("account", _text(row["account"])),
            ("project", _text(row["project"])),
            ("from", _text(row["sender"])),
            ("to", _text(row["to"])),
            ("cc", _text(row["cc"])),
            ("bcc", _text(row["bcc"])),
            ("subject", _text(row["subject"])),
            ("status", _text(row["status"])),
            ("attempt", _text(row["attempt"])),
            ("SMTP code", _text(row["smtp_code"])),
            ("enhanced code", _text(row["enhanced_code"])),
            ("class", _text(row["class"])),
            ("server reply", _text(row["reply"])),
            ("Message-ID", _text(row["message_id"])),
        ]
        error_class = _text(row["class"])
        if error_class:
            fields.append(("remedy", remedy(error_class).long))
        self.detail.value = table(["field", "value"], [[name, value] for name, value in fields], wrapped=[1])

    # -- export -------------------------------------------------------------------------------

    def _export(self) -> None:
        from mailops.fileio import atomic_write
        from mailops.outbox.analysis import spreadsheet_csv
        from mailops.outbox.classify import remedy

        path = Path(str(self.export_path.value).strip()).expanduser()
        if not str(self.export_path.value).strip():
            self.export_outcome.value = message("error", "name the CSV file to write")
            return
        parts: list[str] = []
        written = 0
        # Chunk by chunk from the store: the CSV text is held, not a frame of every row.
        for rows in self._source.export():
            classes = rows["class"]
            remedies = classes.map({name: remedy(str(name)).short for name in classes.cat.categories})
            parts.append(spreadsheet_csv(rows.assign(remedy=remedies), header=not parts))
            written += len(rows)
        if not parts:  # no row: the header alone
            from mailops.outbox.analysis import COLUMNS

            parts.append(",".join([*COLUMNS, "remedy"]) + "\r\n")
        try:
            atomic_write(path, "".join(parts))
        except MailopsError as exc:
            self.export_outcome.value = error_message(exc, "Not exported")
            return
        self.export_outcome.value = message("ok", f"Wrote {written:,} attempt(s) to {path}.")


class _FrameSource:
    """A frame handed in: filtered with one boolean mask; its newest-first order sorted once."""

    def __init__(self, frame: pd.DataFrame, timezone: str) -> None:
        self.frame = frame
        self.timezone = timezone
        # Newest first, rows without a time last; sorted once, masked on every filter.
        times = frame["time"].to_numpy(dtype="datetime64[us]").view(np.int64)
        if (np.diff(times) >= 0).all():  # the usual case: the store's ids follow time (NaT sorts first)
            self._order: npt.NDArray[np.intp] = np.arange(len(times))[::-1]
        else:
            self._order = np.argsort(times, kind="stable")[::-1]
        self._mask: npt.NDArray[np.bool_] = np.ones(len(frame), dtype=bool)
        self._positions = self._order

    def wait(self) -> None:
        """Nothing to wait for: the frame is all there."""

    def accounts(self) -> list[str]:
        return sorted(self._present("account"))

    def projects(self) -> list[str]:
        return sorted(self._present("project"))

    def classes(self) -> list[str]:
        return self._present("class")

    def statuses(self) -> list[str]:
        return self._present("status")

    def _present(self, column: str) -> list[str]:
        """The values that occur in ``column``, in the category's order."""
        values = self.frame[column]
        codes = values.cat.codes.to_numpy()
        present = np.bincount(codes[codes >= 0], minlength=len(values.cat.categories)) > 0
        return [str(name) for name, used in zip(values.cat.categories, present, strict=True) if used]

    def domains(self, limit: int) -> list[str]:
        column = self.frame["recipient_domain"]
        codes = column.cat.codes.to_numpy()
        counts = np.bincount(codes[codes >= 0], minlength=len(column.cat.categories))
        top = np.argsort(-counts, kind="stable")[:limit]
        return [str(column.cat.categories[i]) for i in top if counts[i] > 0]

    def select(self, filters: dict[str, Any]) -> Summaries:
        from mailops.outbox.analysis import filter_mask, summaries

        self._mask = filter_mask(self.frame, timezone=self.timezone, **filters)
        self._positions = self._order[self._mask[self._order]]
        return summaries(self.frame, timezone=self.timezone, **filters)

    def page(self, first: int, size: int) -> tuple[pd.DataFrame, list[int]]:
        """The rows of a page, and each one's number in the frame (from 1) for a row without an id."""
        positions = self._positions[first : first + size]
        return self.frame.iloc[positions], [int(position) + 1 for position in positions]

    def export(self) -> Iterator[pd.DataFrame]:
        yield self.frame[self._mask]


class _StoreSource:
    """The state store's outbox: counted, paged and exported by the database."""

    def __init__(self, outbox: StoreOutbox) -> None:
        self.outbox = outbox
        self._filters: dict[str, Any] = {}

    def wait(self) -> None:
        self.outbox.wait()

    def accounts(self) -> list[str]:
        return self.outbox.accounts()

    def projects(self) -> list[str]:
        return self.outbox.projects()

    def classes(self) -> list[str]:
        return self.outbox.classes()

    def statuses(self) -> list[str]:
        return self.outbox.statuses()

    def domains(self, limit: int) -> list[str]:
        return self.outbox.domains(limit)

    def select(self, filters: dict[str, Any]) -> Summaries:
        self._filters = filters
        return self.outbox.summaries(**filters)

    def page(self, first: int, size: int) -> tuple[pd.DataFrame, list[int]]:
        rows = self.outbox.page(first, size, **self._filters)
        return rows, list(range(first + 1, first + len(rows) + 1))

    def export(self) -> Iterator[pd.DataFrame]:
        return self.outbox.export(**self._filters)


def _options(names: list[str], everything: str) -> list[tuple[str, str | None]]:
    """A dropdown's choices: "all", then each name."""
    return [(everything, None)] + [(name, name) for name in names]


def _chart_image() -> Any:
    # An <img> of the SVG: the chart's text cannot run as HTML in the page, whatever a label holds.
    return widgets.Image(format="svg+xml", layout=widgets.Layout(width="100%", height="auto"))


def _summary_html(found: Summaries) -> str:
    figures, classes = found.headline, found.classes
    rate = "no finished mail" if figures.rate is None else f"{figures.rate:.1%} failed"
    line = f"{figures.sent + figures.failed:,} mails: {figures.sent:,} sent, {figures.failed:,} failed ({rate})"
    if figures.queued:
        line += f", {figures.queued:,} still queued"
    rows = [
        [str(name), f"{int(count):,}", f"{share:.1%}", str(short)]
        for name, count, share, short in zip(
            classes["class"], classes["failures"], classes["share"], classes["remedy"], strict=True
        )
    ]
    parts = [f"<div><b>{escape(line)}</b></div>"]
    if rows:
        parts.append(table(["class", "failures", "share", "remedy"], rows, wrapped=[3]))
    return "".join(parts)


def _local_times(times: pd.Series, timezone: str) -> list[str]:
    local = times.dt.tz_convert(timezone).dt.strftime("%Y-%m-%d %H:%M")
    return [value if isinstance(value, str) else "" for value in local]


def _text(value: Any) -> str:
    """A cell's value as text; NA (of any kind) as empty."""
    import pandas as pd

    if value is None or value is pd.NA or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value)
