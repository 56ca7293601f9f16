"""Full-text search text and queries for SQLite FTS5, Chinese included.

FTS5's unicode61 tokenizer splits on spaces and punctuation; Chinese has neither between
words, so a whole sentence would be one token and no word inside it could be found. The
indexed text puts a space around every CJK character, making each one a token, and a
query for a CJK word becomes the phrase of its characters, which matches them adjacent
and in order. Latin-script words are matched by prefix.
"""

from __future__ import annotations

import re

# Han (incl. extensions A and compatibility), kana, CJK punctuation and fullwidth forms.
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_CHAR = re.compile(f"([{_CJK}])")
_QUERY_TERM = re.compile(f"[{_CJK}]+|[^\\s{_CJK}]+")
_WORD_CHARS = re.compile(r"\w+")


def index_text(text: str) -> str:
    """The text as stored in the search index."""
    return _CJK_CHAR.sub(r" \1 ", text)


def match_query(query: str) -> str | None:
    """An FTS5 MATCH expression finding every term of `query`; None if it has none."""
    clauses: list[str] = []
    for term in _QUERY_TERM.findall(query):
        if _CJK_CHAR.match(term):
            chars = [c for c in term if _WORD_CHARS.fullmatch(c)]  # drop CJK punctuation
            if chars:
                clauses.append('"' + " ".join(chars) + '"')
        else:
            for word in _WORD_CHARS.findall(term):
                clauses.append(f'"{word}"*')
    return " AND ".join(clauses) if clauses else None
