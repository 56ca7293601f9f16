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


MAX_TERMS = 8


def match_terms(query: str) -> list[str]:
    """One FTS5 MATCH expression per term of `query` (at most MAX_TERMS).

    A thread matches when each term is found somewhere in it, not necessarily in one
    message: the caller intersects the terms' threads."""
    clauses: list[str] = []
    for term in _QUERY_TERM.findall(query):
        if _CJK_CHAR.match(term):
            chars = [c for c in term if _WORD_CHARS.fullmatch(c)]  # drop CJK punctuation
            if chars:
                clauses.append('"' + " ".join(chars) + '"')
        else:
            for word in _WORD_CHARS.findall(term):
                clauses.append(f'"{word}"*')
    return list(dict.fromkeys(clauses))[:MAX_TERMS]
