"""Text out of markup: HTML pages, XML documents and feeds.

HTML is parsed by lexbor (selectolax) for CSS and by lxml for XPath; with no
selector, trafilatura keeps a page's main text so navigation and footers do
not count as changes.  XML is parsed by lxml without entities, DTDs or
network (no XXE), with namespaces dropped so ``entry title`` matches Atom's
namespaced elements.  A feed with no selector is read by feedparser, which
knows RSS 0.9x to 2.0, RDF and Atom and their dialects: each entry becomes
its title, link, date and summary.
"""

from __future__ import annotations

import io
import re
from typing import Any

from pipeline.content.errors import ExtractError
from pipeline.content.selectors import Dialect, Selector

#: Feed entries read at most: a feed of thousands is a log, not a page to diff.
MAX_FEED_ENTRIES = 500


def html_text(html: str, selector: Selector | None) -> str:
    from selectolax.lexbor import LexborHTMLParser

    if selector is None:
        return _main_text(html)
    if selector.dialect is Dialect.XPATH:
        from lxml import etree
        from lxml import html as lxml_html

        # huge_tree: libxml2 otherwise stops reading 256 elements deep, and the rest of the page is not there
        parser = lxml_html.HTMLParser(encoding="utf-8", remove_comments=True, huge_tree=True)
        try:
            document = lxml_html.document_fromstring(html.encode("utf-8", "surrogatepass"), parser=parser)
        except etree.ParserError:  # an empty page
            document = lxml_html.document_fromstring("<html></html>")
        return _xpath_text(document, selector)
    if selector.dialect is not Dialect.CSS:
        raise ExtractError(f"{selector.dialect.value} selector {selector.text!r} cannot apply to an HTML page")
    nodes = LexborHTMLParser(html).css(selector.expression)
    if not nodes:
        raise ExtractError(f"CSS selector {selector.text!r} matched nothing")
    return "\n".join(node.text(separator=" ", strip=True) for node in nodes)


#: Past this many characters a page's whole text is watched, not trafilatura's main text: trafilatura
#: took 29 s and 720 MB for one 10 MB page (a scrape replica has 512 MiB), lexbor's text 0.1 s.
MAIN_TEXT_MAX_CHARS = 2 * 1024 * 1024


def _main_text(html: str) -> str:
    import trafilatura
    from selectolax.lexbor import LexborHTMLParser

    if len(html) <= MAIN_TEXT_MAX_CHARS:
        main = trafilatura.extract(html, include_comments=False, include_tables=True)
        if main:
            return main
    body = LexborHTMLParser(html).body
    return body.text(separator="\n", strip=True) if body is not None else ""


def xml_text(xml: str, selector: Selector | None) -> str:
    """The document's text, or what ``selector`` picks; namespaces are ignored, prefixes in selectors too."""
    root = _parse_xml(xml)
    if selector is None:
        return "\n".join(_element_lines(root))
    if selector.dialect is Dialect.JSONPATH:
        raise ExtractError(f"JSONPath selector {selector.text!r} cannot apply to an XML document")
    if selector.dialect is Dialect.CSS:
        from cssselect import GenericTranslator, SelectorError

        try:
            expression = GenericTranslator().css_to_xpath(_CSS_PREFIX.sub("", selector.expression))
        except SelectorError as e:
            raise ExtractError(f"CSS selector {selector.text!r} is not supported on XML: {e}") from None
        return _xpath_text(root, Selector(selector.text, Dialect.CSS, expression))
    return _xpath_text(root, Selector(selector.text, selector.dialect, _without_prefixes(selector.expression)))


#: A namespace prefix in an XPath name test (``dc:creator``, not the axis in ``child::x``) or in CSS (``dc|creator``).
_XPATH_PREFIX = re.compile(r"(?<![\w.-])[A-Za-z_][\w.-]*:(?=[A-Za-z_*])")
_CSS_PREFIX = re.compile(r"(?<![\w|-])(?:[A-Za-z_][\w-]*|\*)\|(?!=)")


def _without_prefixes(expression: str) -> str:
    """``//dc:creator`` -> ``//creator``, outside string literals: the document's namespaces are dropped too."""
    parts = re.split(r"""('[^']*'|"[^"]*")""", expression)
    return "".join(part if i % 2 else _XPATH_PREFIX.sub("", part) for i, part in enumerate(parts))


def feed_text(xml: str) -> str:
    """Each entry as its title, link, date and summary (markup dropped), newest first as served."""
    import feedparser
    from selectolax.lexbor import LexborHTMLParser

    # Bytes, never a str: feedparser would take a string that looks like a URL as one to fetch.
    parsed = feedparser.parse(
        io.BytesIO(_without_declaration(xml).encode("utf-8")),
        response_headers={"content-type": "application/xml; charset=utf-8"},
        resolve_relative_uris=False,
    )
    if not parsed.entries:
        return xml_text(xml, None)
    lines = [parsed.feed.get("title", "")]
    for entry in parsed.entries[:MAX_FEED_ENTRIES]:
        summary = entry.get("summary", "")
        if "<" in summary:
            summary = LexborHTMLParser(summary).text(separator=" ", strip=True)
        # dict.get: feedparser's own get maps a missing date onto the other, with a warning.
        date = dict.get(entry, "published") or dict.get(entry, "updated") or ""
        lines += [entry.get("title", ""), entry.get("link", ""), date]
        lines.append(summary)
    return "\n".join(lines)


def _parse_xml(xml: str) -> Any:
    from lxml import etree

    parser = etree.XMLParser(
        encoding="utf-8",
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        recover=True,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(_without_declaration(xml).encode("utf-8"), parser=parser)
    except etree.XMLSyntaxError as e:
        raise ExtractError(f"body is not XML: {e}") from None
    if root is None:
        raise ExtractError("body is not XML: no root element")
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
        for name in [name for name in element.attrib if "}" in name]:
            element.attrib[name.split("}", 1)[1]] = element.attrib.pop(name)
    etree.cleanup_namespaces(root)
    return root


def _without_declaration(xml: str) -> str:
    """The document without its ``<?xml ... encoding=...?>``: the text is decoded already."""
    stripped = xml.lstrip()
    if stripped.startswith("<?xml"):
        end = stripped.find("?>")
        if end != -1:
            return stripped[end + 2 :]
    return xml


def _xpath_text(document: Any, selector: Selector) -> str:
    from lxml import etree

    try:
        result = document.xpath(selector.expression)
    except etree.XPathError as e:
        raise ExtractError(f"selector {selector.text!r} failed: {e}") from None
    items = result if isinstance(result, list) else [result]
    lines = [_node_text(item) for item in items]
    if not lines:
        raise ExtractError(f"{selector.dialect.value.upper()} selector {selector.text!r} matched nothing")
    return "\n".join(lines)


def _node_text(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, float):
        return f"{item:g}"
    if isinstance(item, str):
        return str(item)
    if isinstance(item, tuple):  # a namespace node
        return str(item[-1])
    return " ".join(part.strip() for part in item.itertext() if part.strip())


def _element_lines(root: Any) -> list[str]:
    return [text.strip() for text in root.itertext() if text.strip()]
