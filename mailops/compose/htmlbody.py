"""The HTML side of a mail: text made HTML, HTML made text, and the inline images it refers to."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote


def text_to_html(text: str) -> str:
    """Plain text as HTML: escaped, each line break a ``<br>``."""
    return "<br>\n".join(html.escape(line, quote=False) for line in text.split("\n"))


_BLANK_LINES = re.compile(r"\n{3,}")


# The most characters a table layout may come to: inscriptis pads every cell to its column's width, so a
# table's text can grow to its rows times its width (one wide cell and many rows in a few hundred KB of HTML
# would ask for gigabytes). Beyond this, tables flow: a line per row, the cells one after another.
MAX_TABLE_LAYOUT = 16 * 1024 * 1024
_TABLE_ROW = re.compile(r"<tr[\s>/]", re.IGNORECASE)


# Levels of nesting laid out; what lies deeper is kept as the text of its element at this level. libxml2 stops
# reading HTML at 256 levels by default, and the text there and after it was lost; inscriptis recurses per level.
MAX_LAYOUT_DEPTH = 200
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # but tab and line feed


def html_to_text(markup: str, *, layout_tables: bool = True) -> str:
    """The text/plain alternative of ``markup``, laid out by inscriptis (tables, lists, line breaks, link targets).

    inscriptis pads table cells to a common width (and height); the padding at line ends is removed,
    and runs of blank lines become one. Tables flow instead where ``layout_tables`` is off (HTML
    from anywhere: a cell of many lines beside a wide one lays out as their product), or where
    their layout could exceed :data:`MAX_TABLE_LAYOUT` (their rows times the markup's length
    bound it for the common cases). Nesting beyond :data:`MAX_LAYOUT_DEPTH` levels is kept as
    plain text. Control characters that entities spell (``&#x1b;``) are left out: text mail
    carries none.
    """
    from inscriptis.html_engine import Inscriptis  # type: ignore[import-untyped]  # lxml: only when a mail is composed
    from inscriptis.model.config import ParserConfig  # type: ignore[import-untyped]

    if layout_tables and len(_TABLE_ROW.findall(markup)) * len(markup) <= MAX_TABLE_LAYOUT:
        config = ParserConfig(display_links=True)
    else:
        config = _flowing_tables()
    tree = _html_tree(markup)
    text = str(Inscriptis(tree, config).get_text()) if tree is not None else ""
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    text = _BLANK_LINES.sub("\n\n", text).strip("\n")
    return text + "\n" if text else ""


def _html_tree(markup: str) -> Any:
    """``markup`` parsed as inscriptis parses it, but deep documents read whole (libxml2's huge_tree) and every
    element at :data:`MAX_LAYOUT_DEPTH` made its text alone; None for no markup."""
    from inscriptis import RE_STRIP_XML_DECLARATION  # type: ignore[import-untyped]
    from lxml.etree import ParserError  # type: ignore[import-untyped]
    from lxml.html import HTMLParser as LxmlParser  # type: ignore[import-untyped]
    from lxml.html import document_fromstring

    markup = markup.strip()
    if not markup:
        return None
    if markup.startswith("<?xml "):
        markup = RE_STRIP_XML_DECLARATION.sub("", markup, count=1)
    parser = LxmlParser(huge_tree=True)
    try:
        tree = document_fromstring(markup, parser=parser)
    except ParserError:  # no element at all: text, as inscriptis reads it
        tree = document_fromstring("<pre>" + markup + "</pre>", parser=parser)
    if any(error.type_name == "ERR_RESOURCE_LIMIT" for error in parser.error_log):
        # Deeper than libxml2 reads even so (2048 levels): it stopped there, and the rest would be lost (a
        # mail could hide text from the archive's search). Its text alone, read by a parser that keeps no tree.
        stripper = _TextOnly()
        stripper.feed(markup)
        stripper.close()
        tree = document_fromstring("<pre>" + html.escape(" ".join(stripper.texts)) + "</pre>", parser=LxmlParser())
    level = [tree]
    for _ in range(MAX_LAYOUT_DEPTH):
        level = [child for element in level for child in element]
    for element in level:
        if len(element):
            text = element.text_content()  # C, no recursion: the element's text, its descendants' and their tails
            for child in list(element):
                element.remove(child)
            element.text = text
    return tree


def _flowing_tables() -> Any:
    """inscriptis' configuration with tables as text that flows: each row a block, each cell followed by a space."""
    from inscriptis.css_profiles import CSS_PROFILES  # type: ignore[import-untyped]
    from inscriptis.html_properties import Display  # type: ignore[import-untyped]
    from inscriptis.model.config import ParserConfig
    from inscriptis.model.html_element import HtmlElement  # type: ignore[import-untyped]
    from inscriptis.model.tag import CustomHtmlTagHandlerMapping  # type: ignore[import-untyped]

    css = CSS_PROFILES["relaxed"].copy()  # inscriptis' default
    css["tr"] = HtmlElement(display=Display.block)
    css["td"] = css["th"] = HtmlElement(suffix=" ")
    unhandled = dict.fromkeys(("table", "tr", "td", "th"))  # no table layout
    return ParserConfig(
        css=css, display_links=True, custom_html_tag_handler_mapping=CustomHtmlTagHandlerMapping(unhandled, unhandled)
    )


class _TextOnly(HTMLParser):
    """The texts of a document, in order, but those of scripts and styles; at any depth (it keeps no tree)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []

    def handle_data(self, data: str) -> None:
        if self.cdata_elem is None and data.strip():  # cdata_elem: inside <script> or <style>
            self.texts.append(" ".join(data.split()))


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
