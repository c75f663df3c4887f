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


#: Block elements nested deeper than this are made siblings at this depth (``bounded_nesting``):
#: libxml2 (lxml, trafilatura) stops reading at 256 elements deep, every element counted, and 200
#: leaves room for ``html``, ``body`` and inline elements inside the deepest block.  (Blink stops
#: nesting at 512.)
MAX_BLOCK_DEPTH = 200

#: How deep each parser copes with, so a page with fewer start tags than this is not even scanned:
#: lexbor parses 8,192 unclosed ``<div>`` in about 0.1 s (the time grows with the square of the
#: depth), lxml with ``huge_tree`` reads 2,048 deep and trafilatura's lxml 256.
LEXBOR_DEPTH, LXML_HUGE_DEPTH, LXML_DEPTH = 8192, 2048, 256

#: A start or end tag, in lower case, of the block elements whose start tag makes an HTML parser look
#: through every open element for a ``p`` to close (the HTML standard's tree construction "in body":
#: "has a p element in button scope"): nested without end tags, parsing costs the square of the depth.
_BLOCK_TAG = re.compile(
    r"<(/?)(a(?:ddress|rticle|side)|blockquote|center|d(?:etails|ialog|ir|iv|l)|f(?:ieldset|igcaption|igure|ooter)"
    r"|h(?:eader|group)|m(?:ain|enu)|nav|ol|s(?:earch|ection|ummary)|ul)(?=[\s/>])"
)


def bounded_nesting(html: str, copes_with: int) -> str:
    """``html`` with block elements nested at most ``MAX_BLOCK_DEPTH`` deep, for a parser that copes
    with ``copes_with`` elements deep; the same string when they are not nested deeper.

    A page of 200,000 unclosed ``<div>`` (1 MB) took lexbor 150 s to parse, in C, where no time
    limit interrupts it; libxml2 silently drops what lies past its depth, so a selector matched
    nothing.  Past the limit, each block's start tag is preceded by the end tag of the innermost open
    block and becomes its sibling, as Blink places elements past its depth.  Tags are found by a scan,
    not a parse, which is enough to bound the depth: one in a comment or a script counts too, and an
    end tag put there is text to the parser.
    """
    if html.count("<") - html.count("</") <= copes_with:  # start tags (and comments): the deepest it can be
        return html
    lowered = html.lower()  # same offsets: the page is ASCII where tags are, and lower() keeps its length
    if len(lowered) != len(html):
        lowered = html  # a rare character whose lower case is longer (İ): upper-case tags are then missed
    if not _too_deep(_BLOCK_TAG.findall(lowered)):
        return html  # one scan, nothing copied
    parts: list[str] = []
    opened: list[str] = []
    copied = 0
    for tag in _BLOCK_TAG.finditer(lowered):
        if _close(opened, tag.group(1), tag.group(2)):
            continue
        if len(opened) == MAX_BLOCK_DEPTH:
            parts += [html[copied : tag.start()], f"</{opened.pop()}>"]
            copied = tag.start()
        opened.append(tag.group(2))
    parts.append(html[copied:])
    return "".join(parts)


def _too_deep(tags: list[tuple[str, str]]) -> bool:
    """Whether these (``/`` or ``""``, name) tags nest blocks deeper than ``MAX_BLOCK_DEPTH``."""
    opened: list[str] = []
    for end, name in tags:
        if not _close(opened, end, name):
            opened.append(name)
            if len(opened) > MAX_BLOCK_DEPTH:
                return True
    return False


def _close(opened: list[str], end: str, name: str) -> bool:
    """For an end tag, close its element and whatever is open inside it (an end tag of nothing open
    is ignored, as parsers ignore it) and return True; False for a start tag."""
    if not end:
        return False
    if opened and opened[-1] == name:
        opened.pop()
    elif name in opened:
        del opened[len(opened) - 1 - opened[::-1].index(name) :]
    return True


def html_text(html: str, selector: Selector | None) -> str:
    from selectolax.lexbor import LexborHTMLParser

    if selector is None:
        return _main_text(bounded_nesting(html, LXML_DEPTH))
    if selector.dialect is Dialect.XPATH:
        from lxml import etree
        from lxml import html as lxml_html

        # huge_tree: libxml2 otherwise stops reading 256 elements deep, and the rest of the page is not there
        parser = lxml_html.HTMLParser(encoding="utf-8", remove_comments=True, huge_tree=True)
        html = bounded_nesting(html, LXML_HUGE_DEPTH)
        try:
            document = lxml_html.document_fromstring(html.encode("utf-8", "surrogatepass"), parser=parser)
        except etree.ParserError:  # an empty page
            document = lxml_html.document_fromstring("<html></html>")
        return _xpath_text(document, selector)
    if selector.dialect is not Dialect.CSS:
        raise ExtractError(f"{selector.dialect.value} selector {selector.text!r} cannot apply to an HTML page")
    nodes = LexborHTMLParser(bounded_nesting(html, LEXBOR_DEPTH)).css(selector.expression)
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
