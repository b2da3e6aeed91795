"""Body conversions Exchange makes when a client asks for a body in another form.

* HTML to text (``BodyType`` Text, and ``t:TextBody``): the visible text, a line per block element,
  whitespace collapsed, every line ended with CRLF;
* text to HTML (``BodyType`` HTML of a text body): the lines escaped, one ``<br>`` each;
* filtered HTML (``FilterHtmlContent``): the document rebuilt as Exchange's safe-HTML writer writes
  it - a head declaring UTF-8, no scripts, frames, objects or forms, no event-handler attributes and
  no ``javascript:`` links, a text run closed with a space before its line break.
"""

from __future__ import annotations

import html
import re

from lxml import etree
from lxml import html as lxml_html

_BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
                     "blockquote", "pre", "hr", "title"})
_UNSAFE = ("script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "form", "meta", "link",
           "base")
_SPACES = re.compile(r"\s+")
CRLF = "\r\n"
HEAD = '<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\r\n</head>\r\n'


def _document(text: str) -> etree._Element | None:
    try:
        return lxml_html.document_fromstring(text)
    except (etree.ParserError, ValueError):
        return None


def html_to_text(text: str) -> str:
    """The visible text of an HTML body."""
    root = _document(text) if text.strip() else None
    if root is None:
        return ""
    lines: list[str] = []
    current: list[str] = []

    def flush() -> None:
        line = _SPACES.sub(" ", "".join(current)).strip()
        if line:
            lines.append(line)
        current.clear()

    def walk(node: etree._Element) -> None:
        name = node.tag if isinstance(node.tag, str) else ""
        if name in ("script", "style", "head"):
            if node.tail:
                current.append(node.tail)
            return
        if name in _BLOCKS:
            flush()
        if node.text and isinstance(node.tag, str):
            current.append(node.text)
        for child in node:
            walk(child)
        if name in _BLOCKS:
            flush()
        if node.tail:
            current.append(node.tail)

    walk(root)
    flush()
    return "".join(line + CRLF for line in lines)


def text_to_html(text: str) -> str:
    body = "<br>\r\n".join(html.escape(line) for line in text.splitlines())
    return f"{HEAD}<body>\r\n{body}\r\n</body>\r\n</html>\r\n"


def filtered_html(text: str) -> str:
    """An HTML body as the safe-HTML filter writes it."""
    root = _document(text) if text.strip() else None
    body = root.find("body") if root is not None else None
    if body is None:
        return f"{HEAD}<body>\r\n</body>\r\n</html>\r\n"
    for node in list(body.iter(*_UNSAFE)):
        if node.getparent() is not None:
            node.drop_tree()
    for node in body.iter():
        if not isinstance(node.tag, str):
            continue
        for name in list(node.attrib):
            value = node.attrib[name].strip().lower()
            if name.lower().startswith("on") or value.startswith(("javascript:", "vbscript:")):
                del node.attrib[name]
    inner = html.escape(body.text or "", quote=False) + "".join(
        lxml_html.tostring(child, encoding="unicode") for child in body)
    inner = _SPACES.sub(" ", inner).strip()
    if inner and not inner.endswith(">"):
        inner += " "  # a text run is closed with a space before its line break
    return f"{HEAD}<body>\r\n{inner}\r\n</body>\r\n</html>\r\n"
