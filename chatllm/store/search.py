"""Full-text search: the text indexed and the terms a query asks for, Chinese included.

Both databases split the indexed text into words at spaces and punctuation (SQLite's
FTS5 with its unicode61 tokenizer, PostgreSQL's `to_tsvector('simple', …)`); Chinese has
neither between words, so a whole sentence would be one word and nothing inside it could
be found. The indexed text is therefore prepared here, the same for both: every CJK
character is a word of its own, Latin-script letters lose their accents and case, and
anything that is not a letter or a digit becomes a space (so PostgreSQL's parser finds no
URLs or file paths of its own to keep whole). An emoji or pictograph, which both
tokenizers take for a separator, becomes a word of its own spelling its code point
(`emj01f30a` for 🌊), so it is found too. A query's CJK word becomes the phrase of its
characters, which matches them adjacent and in order; a Latin-script word matches by
prefix. Each dialect writes a term in its own syntax (`Dialect.match`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from chatllm.i18n import CJK
from chatllm.store.dialect import Connection, sql

_CJK_CHAR = re.compile(f"([{CJK}])")
_QUERY_TERM = re.compile(f"[{CJK}]+|[^\\s{CJK}]+")
_WORD_CHARS = re.compile(r"[^\W_]+")  # letters and digits: what both tokenizers keep
#: Emoji and pictographs (arrows, technical symbols, dingbats, the emoji planes).
_PICTOGRAPH = re.compile(
    "[\u2190-\u21ff\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]"
)


def _pictograph_word(match: re.Match[str]) -> str:
    # Six hex digits, so one emoji's word is never the prefix of another's.
    return f" emj{ord(match.group()):06x} "


#: Only this much of a message is indexed: PostgreSQL's tsvector holds at most 1 MB, and
#: a message may be far longer (it is kept whole; the app refuses to send it on).
MAX_INDEXED_CHARS = 200_000


def _plain(char: str) -> str:
    """A Latin, Greek or Cyrillic letter without its accents (as FTS5's remove_diacritics
    does); any other character as it is (kana keep their voicing marks, Hangul its
    syllables)."""
    if not ("\u00c0" <= char < "\u0590" or "\u1e00" <= char <= "\u1eff"):
        return char
    return "".join(c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c))


def index_text(text: str) -> str:
    """The text as stored in the search index: its words, lower case, space-separated."""
    spaced = _CJK_CHAR.sub(r" \1 ", text[:MAX_INDEXED_CHARS])
    spaced = _PICTOGRAPH.sub(_pictograph_word, spaced)
    return " ".join(_WORD_CHARS.findall("".join(map(_plain, spaced)).lower()))


@dataclass(frozen=True)
class Term:
    """One thing a query asks for: a word (matched by prefix when `prefix`), or the
    characters of a CJK word, matched adjacent and in order."""

    words: tuple[str, ...]
    prefix: bool = False


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


def rows_of_thread(seq: str) -> str:
    """SQL: a search row is one of the thread whose seq is the SQL expression `seq`."""
    first = f"({seq}) * {1 << _STEP_BITS}"
    return f"rowid BETWEEN {first} AND {first} + {(1 << _STEP_BITS) - 1}"


def query_terms(query: str) -> list[Term]:
    """The terms of `query` (at most MAX_TERMS), normalised as the index is.

    A thread matches when each term is found somewhere in it, not necessarily in one
    message: the caller intersects the terms' threads."""
    terms: list[Term] = []
    for part in _QUERY_TERM.findall(query):
        words = index_text(part).split()
        if not words:
            continue  # punctuation only
        if _CJK_CHAR.match(part):
            terms.append(Term(tuple(words)))
        else:
            terms += [Term((word,), prefix=len(word) >= MIN_PREFIX) for word in words]
    return list(dict.fromkeys(terms))[:MAX_TERMS]


async def reindex_threads(
    conn: Connection, after: int, limit: int | None
) -> tuple[int, int] | None:
    """Make the search rows of the threads after `after` (by seq; at most `limit` of them,
    or all) again from their names and messages, as `index_text` makes them now: the last
    one's seq and how many, or None when there was none."""
    batch = (
        await conn.execute(
            sql(
                "SELECT seq, name FROM threads WHERE seq > :after ORDER BY seq"
                + (f" LIMIT {int(limit)}" if limit is not None else "")
            ),
            {"after": after},
        )
    ).all()
    if not batch:
        return None
    first, last = batch[0].seq, batch[-1].seq
    await conn.execute(
        sql("DELETE FROM search WHERE rowid BETWEEN :first AND :last"),
        {"first": thread_rowids(first)[0], "last": thread_rowids(last)[1]},
    )
    rows = [{"key": name_rowid(t.seq), "body": index_text(t.name)} for t in batch if t.name]
    messages = await conn.execute(
        sql(
            "SELECT t.seq AS thread_seq, s.seq, s.output FROM steps s"
            " JOIN threads t ON t.id = s.thread_id"
            " WHERE t.seq BETWEEN :first AND :last"
            " AND s.type LIKE '%message' AND s.output != ''"
        ),
        {"first": first, "last": last},
    )
    rows += [
        {"key": message_rowid(m.thread_seq, m.seq), "body": index_text(m.output)} for m in messages
    ]
    if rows:
        await conn.execute(sql("INSERT INTO search (rowid, body) VALUES (:key, :body)"), rows)
    return int(last), len(batch)
