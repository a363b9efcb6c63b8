"""The demo corpus: paragraphs of the Python documentation that ships with Python.

``pydoc_data.topics`` is in every CPython install, so the demo and the tests need no
download. It mixes prose, grammar and code, and a few paragraphs run past 256 tokens,
which is what exercises truncation.
"""

from __future__ import annotations

import re

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_MIN_WORDS = 8


def demo_corpus(limit: int | None = None) -> list[str]:
    """Distinct paragraphs of at least eight words, whitespace collapsed, in a stable
    order (topics sorted by name); the first ``limit`` when given."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    paragraphs: list[str] = []
    for name in sorted(topics):
        for block in _PARAGRAPH_BREAK.split(topics[name]):
            text = " ".join(block.split())
            if len(text.split()) >= _MIN_WORDS and text not in seen:
                seen.add(text)
                paragraphs.append(text)
    return paragraphs if limit is None else paragraphs[:limit]
