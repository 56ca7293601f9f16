"""Full-text search text and queries for SQLite FTS5, Chinese included.

FTS5's unicode61 tokenizer splits on spaces and punctuation; Chinese has neither between
words, so a whole sentence would be one token and no word inside it could be found. The
indexed text puts a space around every CJK character, making each one a token, and a
query for a CJK word becomes the phrase of its characters, which matches them adjacent
and in order. Latin-script words are matched by prefix.
"""

from __future__ import annotations

import re

from chatllm.i18n import CJK

_CJK_CHAR = re.compile(f"([{CJK}])")
_QUERY_TERM = re.compile(f"[{CJK}]+|[^\\s{CJK}]+")
_WORD_CHARS = re.compile(r"\w+")


def index_text(text: str) -> str:
    """The text as stored in the search index."""
    return _CJK_CHAR.sub(r" \1 ", text)


MAX_TERMS = 8
#: Latin terms shorter than this match whole words only: a prefix search for "t" would
#: expand to every word starting with t (seconds, and a burst of memory, in a big store).
MIN_PREFIX = 3

# Search rows are keyed by thread: rowid = thread seq << 32 | step seq (0 for the thread's
# name). A search then yields thread seqs from rowids alone (rowid >> 32), without reading
# any stored column, and a thread's rows are one rowid range.
_STEP_BITS = 32


def name_rowid(thread_seq: int) -> int:
    return thread_seq << _STEP_BITS


def message_rowid(thread_seq: int, step_seq: int) -> int:
    if not 0 < step_seq < 1 << _STEP_BITS:
        raise ValueError(f"step seq {step_seq} does not fit the search key")
    return (thread_seq << _STEP_BITS) | step_seq


def thread_rowids(thread_seq: int) -> tuple[int, int]:
    """The first and last search rowid a thread can own."""
    return thread_seq << _STEP_BITS, (thread_seq << _STEP_BITS) | ((1 << _STEP_BITS) - 1)


#: SQL giving a search row's thread seq.
THREAD_SEQ_OF_ROW = f"rowid >> {_STEP_BITS}"


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
                clauses.append(f'"{word}"*' if len(word) >= MIN_PREFIX else f'"{word}"')
    return list(dict.fromkeys(clauses))[:MAX_TERMS]
