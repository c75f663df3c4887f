"""Text out of data and documents: JSON, PDF, and binary bodies (their hash only)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

from pipeline.content.errors import ExtractError
from pipeline.content.selectors import Dialect, Selector, compile_jsonpath

#: PDF pages read at most; a longer document's tail is not watched (said in the text).
MAX_PDF_PAGES = 200


def parse_json(text: str) -> Any:
    """The JSON document; raises ``ExtractError`` for anything that is not (too deep included)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ExtractError(f"body is not JSON: {str(e)[:200]}") from None


def json_text(document: Any, selector: Selector | None) -> str:
    """The selected values, one per line (strings as they are, the rest as canonical JSON)."""
    if selector is None:
        return _canonical(document)
    path = selector.expression if selector.dialect is Dialect.JSONPATH else selector.json_path
    if path is None:
        raise ExtractError(
            f"{selector.dialect.value.upper()} selector {selector.text!r} cannot apply to JSON; "
            "use a JSONPath such as $.item.price"
        )
    try:
        matches = compile_jsonpath(path).find(document)
    except Exception as e:  # a filter comparing what cannot be compared, and the like
        raise ExtractError(f"JSONPath {selector.text!r} failed: {e}") from None
    if not matches:
        raise ExtractError(f"JSONPath {selector.text!r} matched nothing")
    return "\n".join(m.value if isinstance(m.value, str) else _canonical(m.value) for m in matches)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False)


def pdf_text(body: bytes) -> str:
    """The text of each page in order (pypdf, pure Python); raises ``ExtractError`` for a broken file."""
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about damaged files are ours to say
    try:
        reader = PdfReader(io.BytesIO(body))
        if reader.is_encrypted:
            reader.decrypt("")  # many "protected" PDFs open with the empty password
        pages = [page.extract_text() or "" for page in reader.pages[:MAX_PDF_PAGES]]
        total = len(reader.pages)
    except Exception as e:  # pypdf raises many kinds for a damaged or locked file
        raise ExtractError(f"cannot read the PDF: {type(e).__name__}: {str(e)[:200]}") from None
    if total > MAX_PDF_PAGES:
        pages.append(f"(only the first {MAX_PDF_PAGES} of {total} pages are watched)")
    return "\n".join(pages)


def binary_text(body: bytes, what: str) -> str:
    """One line that changes exactly when the bytes do: what it is, its size and SHA-256."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{what}, {len(body)} bytes, SHA-256 {digest}"
