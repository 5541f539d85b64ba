"""The HTML side of a mail: text made HTML, HTML made text, and the inline images it refers to."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from urllib.parse import unquote


def text_to_html(text: str) -> str:
    """Plain text as HTML: escaped, each line break a ``<br>``."""
    return "<br>\n".join(html.escape(line, quote=False) for line in text.split("\n"))


_BLANK_LINES = re.compile(r"\n{3,}")


def html_to_text(markup: str) -> str:
    """The text/plain alternative of ``markup``, laid out by inscriptis (tables, lists, line breaks, link targets).

    inscriptis pads table cells to a common width; the padding at line ends is removed,
    and runs of blank lines become one.
    """
    from inscriptis import get_text  # type: ignore[import-untyped]  # lxml is imported only when a mail is composed
    from inscriptis.model.config import ParserConfig  # type: ignore[import-untyped]

    text = str(get_text(markup, ParserConfig(display_links=True)))
    text = "\n".join(line.rstrip() for line in text.splitlines())
    text = _BLANK_LINES.sub("\n\n", text).strip("\n")
    return text + "\n" if text else ""


class _InlineImages(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.names: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "img":
            return
        for name, value in attrs:
            if name == "src" and value is not None and value.strip()[:4].lower() == "cid:":
                self.names.append(unquote(value.strip()[4:]))


def inline_image_names(markup: str) -> list[str]:
    """The NAMEs of every ``<img src="cid:NAME">`` in ``markup``, each once, in order (percent-escapes decoded)."""
    if "<img" not in markup.lower():  # no tag the parser would call img (most mails): no need to parse
        return []
    parser = _InlineImages()
    parser.feed(markup)
    parser.close()
    return list(dict.fromkeys(parser.names))
