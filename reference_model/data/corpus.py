"""A small bundled English corpus: the Python documentation topics shipped with CPython.

``pydoc_data.topics.topics`` holds the language reference sections that ``help()`` shows
(about 465 kB of real English prose with code), so the tokenizer and the tiny trainer need no
download. The text is read in sorted topic order so every run sees the same bytes.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def corpus_text() -> str:
    """The whole corpus as one string, topics in sorted-name order, separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def corpus_documents() -> list[str]:
    """One string per pydoc topic, in sorted-name order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]
