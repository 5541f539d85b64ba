"""Charts of the outbox summaries (:mod:`mailops.outbox.analysis`), as matplotlib figures and inline SVG.

One function per chart takes the summary frame it shows and returns a
:class:`~matplotlib.figure.Figure`; :func:`svg` turns a figure into SVG text for an HTML
page. A summary without rows gives a figure that says "no data", never an exception.

The figures are made with matplotlib's object API on the Agg canvas, never through pyplot:
pyplot would pick a backend for the whole process (the notebook's inline one included) and
keep every figure alive in its registry until closed, which a long-running notebook or a
report that draws many charts would pay for. For the same reason the charts do not go
through pandas' ``.plot``, which draws through pyplot; a few bars and a line are drawn from
the summary's columns directly. Nothing is loaded from the internet: the SVG names the
font (DejaVu Sans, shipped with matplotlib, then any sans-serif) and embeds nothing else.

A chart drawn again and again (the notebook's explorer, on every filter) can be drawn on the figure of
its previous drawing (``figure=``): its axes, ticks and title stay, only the data's artists are made
anew, which halves the time of a chart.

Importing this module imports matplotlib's figure and Agg canvas (never pyplot, nor a GUI toolkit):
the command line imports it only inside the command that draws.
"""

from __future__ import annotations

import io
import re
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

# The same salt for every SVG: matplotlib derives its element ids from it (a random one by
# default), so the same data gives the same text. The ids still depend on the drawing, so two
# charts inlined in one page share an id only for an identical definition.
HASH_SALT = "mailops-outbox"
WIDTH = 7.0  # inches; at the SVG's 72 units per inch, about 500 pixels
BAR_HEIGHT = 0.32  # inches per bar of a bar chart, so that long lists stay readable
LABEL_GAP = 0.05  # inches between a bar's name and the axes
FONT_SIZE = 9  # points
# The margins are set by hand, not by matplotlib's layout engines: those draw every figure
# twice to measure it, which tripled the time of the charts. A label's width is estimated from
# its length (DejaVu Sans averages about 0.6 em per character); the SVG's text is set by the
# browser anyway, so exact metrics would buy nothing.
CHAR_WIDTH = 0.6 * FONT_SIZE / 72  # inches
TOP, BOTTOM = 0.42, 0.42  # inches: the title above, the tick labels below
BAR_BOTTOM = 0.12  # inches below a bar chart, which has no axis there
FAILED_COLOUR = "#c0392b"
RATE_COLOUR = "#1f5f99"
NO_DATA = "no data"
_KIND = "mailops-chart: "  # the start of a chart's figure's gid, which names the chart
_NAMESPACES = re.compile(r' xmlns(?::xlink)?="[^"]*"')

# Any keys: matplotlib's stubs spell out every rc name as a Literal, which a dict built here cannot be.
_STYLE: dict[Any, Any] = {
    "svg.hashsalt": HASH_SALT,
    # Text as <text> elements naming the font, not as drawn glyph outlines: a tenth of the size,
    # searchable, and read by screen readers.
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": FONT_SIZE,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # Labels are data (account addresses, domains): a "$" in one must not start a formula, or fail to parse.
    "text.parse_math": False,
}


def failures_by_class(summary: pd.DataFrame, *, figure: Figure | None = None) -> Figure:
    """Failed mails per error class (the frame of ``by_class``): horizontal bars, most first. ``figure``: this
    chart's previous drawing, to draw on again (see the module's description)."""
    return _bars(summary, "class", "failures", "Failed mails by error class", figure)


def failures_by_account(summary: pd.DataFrame, *, figure: Figure | None = None) -> Figure:
    """Failed mails per sending account (the frame of ``by_account``)."""
    failing = summary[summary["failed"] > 0] if len(summary) else summary
    return _bars(failing, "account", "failed", "Failed mails by account", figure)


def failures_by_domain(summary: pd.DataFrame, *, figure: Figure | None = None) -> Figure:
    """Failed mails per recipient domain (the frame of ``by_domain``, its top domains)."""
    return _bars(summary, "domain", "failed", "Recipient domains with the most failed mails", figure)


def failure_rate_by_day(summary: pd.DataFrame, *, figure: Figure | None = None) -> Figure:
    """The share of failed mails per day (the frame of ``by_day``), as a line with a gap on a day without mail
    (a rate of nothing is not 0 %); a summary without any mail gives "no data"."""
    title = "Failure rate by day"
    if not len(summary) or int(summary["mails"].sum()) == 0:  # a rate of no mail at all would draw a flat 0 %
        return no_data(title)
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    with matplotlib.rc_context(_STYLE):
        if figure is not None and _kind(figure) == "rate":
            axes = figure.axes[0]
            for artist in [*axes.lines, *axes.collections]:
                artist.remove()
        else:
            figure = _figure(WIDTH, 3.0, left=0.75, kind="rate")
            axes = figure.add_subplot()
            # Few ticks: each is a handful of artists, the better part of the time of a chart.
            locator = AutoDateLocator(minticks=3, maxticks=6)  # type: ignore[no-untyped-call]
            axes.xaxis.set_major_locator(locator)
            axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
            axes.set_title(title, loc="left")
            axes.yaxis.set_major_locator(MaxNLocator(nbins=4))
            axes.set_ylabel("share of mails that failed")
            axes.grid(axis="y", linewidth=0.5, alpha=0.5)
        days = pd.to_datetime(summary["day"]).to_numpy()
        rates = np.where(summary["mails"].to_numpy() > 0, summary["rate"].to_numpy(dtype=float), np.nan)
        # Markers, so that a day between two without mail still shows; up to a quarter year they stay apart.
        axes.plot(days, rates, color=RATE_COLOUR, linewidth=1.5, marker="o" if len(days) <= 92 else None, markersize=3)
        axes.fill_between(days, rates, color=RATE_COLOUR, alpha=0.12, linewidth=0)
        axes.set_ylim(0, max(0.05, float(np.nanmax(rates)) * 1.15))
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0 if np.nanmax(rates) >= 0.1 else 1))
        # The whole period: days without mail (NaN) do not count when the axis sizes itself.
        pad = np.timedelta64(12, "h") if len(days) > 1 else np.timedelta64(1, "D")
        axes.set_xlim(days[0] - pad, days[-1] + pad)
    return figure


def no_data(title: str) -> Figure:
    """A chart that says there is nothing to show, under ``title``."""
    with matplotlib.rc_context(_STYLE):
        figure = _figure(WIDTH, 1.6, left=0.1, kind="no data")
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.set_title(title, loc="left")
        axes.text(0.5, 0.45, NO_DATA, ha="center", va="center", fontsize=12, color="#777777")
    return figure


def svg(figure: Figure) -> str:
    """The figure as SVG text to inline in HTML: the ``<svg>`` element only (no XML declaration or DOCTYPE,
    which names an external DTD), without a date or other metadata, the same for the same figure.

    The namespace declarations are dropped too: HTML's parser puts an inline ``<svg>`` and its
    ``xlink:href`` in their namespaces itself, and a page without any ``http://`` in its markup
    is easy to check for external references."""
    buffer = io.StringIO()
    with matplotlib.rc_context(_STYLE):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    return _NAMESPACES.sub("", text, count=2)


def _bars(summary: pd.DataFrame, label: str, value: str, title: str, figure: Figure | None) -> Figure:
    """Horizontal bars of ``value`` per ``label``, in the summary's order from the top, each with its count."""
    if not len(summary) or int(summary[value].sum()) == 0:
        return no_data(title)
    labels = [str(name) for name in summary[label]]
    counts = summary[value].to_numpy(dtype=np.int64)
    with matplotlib.rc_context(_STYLE):
        left = min(0.2 + CHAR_WIDTH * max(len(name) for name in labels), WIDTH / 2)
        height = TOP + BAR_BOTTOM + 0.15 + BAR_HEIGHT * len(labels)
        if figure is not None and _kind(figure) == f"bars: {title}":
            axes = figure.axes[0]
            for artist in [*axes.patches, *axes.texts]:
                artist.remove()
            axes.containers.clear()
            figure.set_size_inches(WIDTH, height)
            _margins(figure, WIDTH, height, left=left, bottom=BAR_BOTTOM)
        else:
            figure = _figure(WIDTH, height, left=left, bottom=BAR_BOTTOM, kind=f"bars: {title}")
            axes = figure.add_subplot()
            # No axis of counts: each bar is labelled with its own. A tick is a handful of artists, and the ticks
            # were most of the time of a chart.
            axes.xaxis.set_visible(False)
            axes.spines["bottom"].set_visible(False)
            axes.set_yticks([])
            axes.set_title(title, loc="left")
        positions = np.arange(len(labels))
        bars = axes.barh(positions, counts, color=FAILED_COLOUR, height=0.7)
        # Each bar's name as a text where its tick label would be (no tick either).
        beside = axes.get_yaxis_transform()  # x in the axes' width, y in bars
        for position, name in zip(positions, labels, strict=True):
            axes.text(-LABEL_GAP / WIDTH, float(position), name, transform=beside, ha="right", va="center")
        # The summary's first row on top; the margins as matplotlib's autoscaling would leave them.
        margin = 0.05 * (len(labels) - 0.3)
        axes.set_ylim(len(labels) - 0.65 + margin, -0.35 - margin)
        axes.bar_label(bars, labels=[f"{count:,}" for count in counts], padding=3, fontsize=8)
        axes.set_xlim(0, counts.max() * 1.12)  # room for the last label
    return figure


def _figure(width: float, height: float, *, left: float, kind: str, bottom: float = BOTTOM) -> Figure:
    """A figure on the Agg canvas (not registered with pyplot) whose axes leave ``left`` and ``bottom`` inches for
    labels; ``kind`` says which chart it holds, for drawing on it again."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    _margins(figure, width, height, left=left, bottom=bottom)
    figure.set_gid(f"{_KIND}{kind}")
    return figure


def _margins(figure: Figure, width: float, height: float, *, left: float, bottom: float = BOTTOM) -> None:
    figure.subplots_adjust(left=left / width, right=1 - 0.45 / width, top=1 - TOP / height, bottom=bottom / height)


def _kind(figure: Figure | None) -> str | None:
    """Which chart ``figure`` holds (None: none of these)."""
    gid = figure.get_gid() if figure is not None else None
    return gid.removeprefix(_KIND) if isinstance(gid, str) and gid.startswith(_KIND) else None
