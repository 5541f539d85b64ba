"""The report as one HTML page that needs nothing but itself.

The styles are inline, the charts are inline SVG, and there is no script, font, image or
link that a browser would load: the page's Content-Security-Policy forbids every request
besides, so even text that slipped through would load nothing. Every piece of text from the
log or the state (subjects, replies, addresses, errors) is HTML-escaped where it is put in, its
control characters written as escapes.
"""

from __future__ import annotations

import math
from html import escape
from typing import TYPE_CHECKING

from mailops.errors import printable

if TYPE_CHECKING:
    import pandas as pd

    from mailops.report import Report

# Nothing may be loaded from anywhere: inline styles only (the SVGs' own <style> included).
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
MAX_CELL = 300  # characters of a text (a subject, the recipients, a server's reply) in a table; the CSV has it whole
NONE = "—"

_STYLE = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta, .note { color: #666; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; margin: 1rem 0; }
.figure { border: 1px solid #ddd; border-radius: 4px; padding: 0.6rem 1rem; min-width: 9rem; }
.figure .value { font-size: 1.6rem; font-weight: bold; display: block; }
.figure .label { color: #666; font-size: 0.85rem; }
.worse { color: #c0392b; } .better { color: #1e7b34; }
figure.chart { margin: 1rem 0; } figure.chart svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; vertical-align: top; padding: 0.3rem 0.5rem; border-bottom: 1px solid #eee; }
th { background: #f6f6f6; } td.number { text-align: right; white-space: nowrap; }
td.reply { font-family: monospace; font-size: 0.8rem; word-break: break-word; }
"""


def render(report: Report) -> str:
    """The whole page."""
    span = report.period
    title = f"Outbox report {span.first.isoformat()} to {span.last.isoformat()}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_text(title)}</h1>",
        f'<p class="meta">{span.days} day(s), calendar days in {_text(span.timezone)}; made '
        f"{report.generated_at:%Y-%m-%d %H:%M} UTC by <code>mailops report</code>.</p>",
    ]
    if report.empty:
        parts.append('<p class="note" id="empty">The outbox has no mail in this period.</p>')
    parts += _headline(report)
    parts.append("<h2>Charts</h2>")
    for caption, svg in report.charts.items():
        # The SVG is matplotlib's output, which escapes its text itself and shows the title: the caption is for
        # screen readers only.
        parts.append(f'<figure class="chart" aria-label="{_text(caption)}">{svg}</figure>')
    parts += _classes(report.classes)
    parts += _actions(report)
    parts += _latest(report.latest_failures, span.timezone)
    parts += _files(report)
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _headline(report: Report) -> list[str]:
    figures = report.headline
    previous = report.period.previous()
    change = figures.change
    trend = "" if change is None or change == 0 else (" worse" if change > 0 else " better")
    cells = [
        ("sent", "sent", _count(figures.sent), str(figures.sent)),
        ("failed", "failed", _count(figures.failed), str(figures.failed)),
        ("failure-rate", "failure rate", _percent(figures.rate), _raw(figures.rate)),
        ("change", f"change against {previous.first.isoformat()} to {previous.last.isoformat()}",
         _points(change), _raw(change)),
    ]  # fmt: skip
    lines = ["<h2>Headline</h2>", '<div class="figures">']
    for key, label, shown, exact in cells:
        css = f"figure{trend}" if key == "change" else "figure"
        lines.append(
            f'<div class="{css}"><span class="value" id="{key}" data-value="{_text(exact)}">{_text(shown)}</span>'
            f'<span class="label">{_text(label)}</span></div>'
        )
    lines.append("</div>")
    lines.append(
        '<p class="meta">Each mail counts once, by its last attempt; failed means refused while sending or '
        f"bounced later. Still queued: {_count(figures.queued)}. "
        f"The period before: {_count(figures.previous_sent)} sent, {_count(figures.previous_failed)} failed "
        f"({_percent(figures.previous_rate)}).</p>"
    )
    return lines


def _classes(classes: pd.DataFrame) -> list[str]:
    from mailops.report import TOP_CLASSES

    lines = ["<h2>Top error classes and what to do</h2>"]
    if not len(classes):
        return [*lines, '<p class="note">No mail failed in this period.</p>']
    lines.append("<table><thead><tr><th>class</th><th>failed</th><th>share</th><th>what to do</th></tr></thead><tbody>")
    for row in classes.head(TOP_CLASSES).to_dict("records"):
        passing = " (passing: worth another try later)" if row["temporary"] else ""
        lines.append(
            f"<tr><td><code>{_text(_value(row['class']))}</code>{_text(passing)}</td>"
            f'<td class="number">{_count(int(row["failures"]))}</td>'
            f'<td class="number">{_percent(float(row["share"]))}</td>'
            f"<td><strong>{_text(_value(row['remedy']))}</strong><br>{_text(_value(row['details']))}</td></tr>"
        )
    lines.append("</tbody></table>")
    if len(classes) > TOP_CLASSES:
        lines.append(f'<p class="meta">{len(classes) - TOP_CLASSES} more class(es) in the classes CSV.</p>')
    return lines


def _actions(report: Report) -> list[str]:
    lines = ["<h2>Accounts that need action</h2>"]
    if not report.actions:
        return [*lines, '<p class="note">Every account is connected.</p>']
    lines.append("<table><thead><tr><th>account</th><th>status</th><th>why</th><th>fix</th></tr></thead><tbody>")
    for action in report.actions:
        lines.append(
            f"<tr><td>{_text(action.address)}</td><td>{_text(action.status)}</td>"
            f"<td>{_text(action.reason)}</td><td>{_text(action.fix)}</td></tr>"
        )
    lines.append("</tbody></table>")
    return lines


def _latest(latest: pd.DataFrame, timezone: str) -> list[str]:
    lines = ["<h2>Latest failed attempts</h2>"]
    if not len(latest):
        return [*lines, '<p class="note">None in this period.</p>']
    lines.append(
        f"<table><thead><tr><th>time ({_text(timezone)})</th><th>account</th><th>to</th><th>subject</th><th>class</th>"
        "<th>server's reply</th></tr></thead><tbody>"
    )
    for row in latest.to_dict("records"):
        cells = "".join(f"<td>{_text(_cell(row[name]))}</td>" for name in ("time", "account", "to", "subject"))
        lines.append(
            f"<tr>{cells}<td><code>{_text(_value(row['class']))}</code></td>"
            f'<td class="reply">{_text(_cell(row["reply"]))}</td></tr>'
        )
    lines.append("</tbody></table>")
    return lines


def _files(report: Report) -> list[str]:
    from mailops.report import TABLES

    names = [f"{report.stem}-{name}.csv" for name in TABLES]
    items = "".join(f"<li><code>{_text(name)}</code></li>" for name in names)
    return ["<h2>Data</h2>", f'<p class="meta">The tables behind this page, beside it:</p><ul>{items}</ul>']


def _text(value: str) -> str:
    # Control characters are shown escaped, as on a terminal: a bidirectional override would show
    # `invoice \u202egpj.exe` as `invoice exe.jpg`. Line breaks stay (the page folds them).
    return escape("\n".join(printable(line) for line in value.split("\n")), quote=True)


def _cell(value: object) -> str:
    """A table cell's text, cut after :data:`MAX_CELL` characters."""
    text = _value(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _value(value: object) -> str:
    """A table cell's text: empty for NA (NaN in a text column, pandas' NA in an integer one)."""
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _count(value: int | None) -> str:
    return NONE if value is None else f"{value:,}"


def _percent(value: float | None) -> str:
    return NONE if value is None else f"{value:.1%}"


def _points(value: float | None) -> str:
    """A change of a rate in percentage points, with its sign."""
    return NONE if value is None else f"{value * 100:+.1f} pp"


def _raw(value: float | None) -> str:
    return "" if value is None else repr(value)
