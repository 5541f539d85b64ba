"""Checks that the HTML template ("HTML Template" in the seed) is HTML that can wrap a mail.

The standard library's parser is lenient and accepts any text, so on top of it this
checks what breaks a mail in practice: no markup at all, closing tags that do not
match, elements that are never closed, and a missing content placeholder.
"""

from __future__ import annotations

from html.parser import HTMLParser

from mailops.spec.models import CONTENT_PLACEHOLDER

# Elements without content, and elements whose end tag HTML lets the writer omit.
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
_OPTIONAL_END = frozenset(
    "html head body p li dt dd tr td th thead tbody tfoot option optgroup colgroup caption rt rp".split()
)


class _TagBalance(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str, tuple[int, int]]] = []
        self.elements = 0
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements += 1
        if tag not in _VOID:
            self.open.append((tag, self.getpos()))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        line, offset = self.getpos()
        names = [name for name, _ in self.open]
        if tag not in names:
            self.errors.append(f"{line}:{offset + 1}: closing tag </{tag}> has no matching opening tag")
            return
        # Pop back to the matching tag; anything skipped must allow an omitted end tag.
        while self.open:
            name, (open_line, open_offset) = self.open.pop()
            if name == tag:
                break
            if name not in _OPTIONAL_END:
                self.errors.append(
                    f"{line}:{offset + 1}: closing tag </{tag}> while <{name}> "
                    f"(opened at {open_line}:{open_offset + 1}) is still open"
                )


def check_html_template(text: str) -> list[str]:
    """Problems found in the template, each as ``"LINE:COL: message"`` or a plain message."""
    parser = _TagBalance()
    parser.feed(text)
    parser.close()
    if parser.elements == 0:
        return ["is not HTML: it contains no HTML elements"]
    problems = list(parser.errors)
    for name, (line, offset) in parser.open:
        if name not in _OPTIONAL_END:
            problems.append(f"{line}:{offset + 1}: <{name}> is never closed")
    if CONTENT_PLACEHOLDER not in text:
        problems.append(f"has no {CONTENT_PLACEHOLDER} placeholder where the mail's content goes")
    return problems
