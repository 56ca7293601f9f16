"""`python -m chatllm db copy`: an install's whole store moved to another database.

Every table the app keeps is copied row by row in batches, each batch one transaction on
the target, in an order that keeps every reference whole (users, threads, steps, then
what refers to them). A row's `seq` is not copied: the target numbers rows itself, in the
source's order, so a thread's messages keep their order and the target's own sequences
stay right. The search index is then rebuilt from the copied rows, with the target's
numbering. An interrupted copy is finished by running it again with `resume`: rows
already copied (by id) are skipped, the rest follow, and the index is rebuilt whole.
At the end every table must hold as many rows in the target as in the source. The rows
are written as every write is (`chatllm.store.db.storable`): a NUL in a store written
before that arrives as U+FFFD, which PostgreSQL can hold.

Element files are not in the database: they stay in the data directory's `files` folder,
which the target's app must be given (the same CHATLLM_DATA_DIR, or a copy of it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from chatllm.errors import ChatLLMError
from chatllm.store.db import Database
from chatllm.store.dialect import sql
from chatllm.store.search import reindex_threads

BATCH = 1000
#: Threads whose search rows are rebuilt in one transaction.
SEARCH_BATCH = 200


class CopyError(ChatLLMError):
    """The copy was refused or could not be finished; the message says why and what to do."""


@dataclass(frozen=True)
class Table:
    name: str
    #: The row's identity in both databases: how a re-run knows it is already there.
    key: tuple[str, ...]
    #: The source's order: `seq` where the table has one, so the target numbers its
    #: rows in the same order.
    order: tuple[str, ...]
    what: str


#: Every table of the store, each after the tables it refers to. (`search` is rebuilt;
#: `schema_migrations` is each database's own: both are brought up to date first.)
TABLES = (
    Table("users", ("id",), ("id",), "users"),
    Table("threads", ("id",), ("seq",), "threads"),
    Table("steps", ("id",), ("seq",), "steps"),
    Table("token_records", ("step_id",), ("step_id",), "token records"),
    Table("feedbacks", ("id",), ("id",), "feedbacks"),
    Table("elements", ("id",), ("id",), "elements"),
    Table("presets", ("user_id", "name"), ("user_id", "name"), "presets"),
    Table("ended_sessions", ("login",), ("login",), "ended sessions"),
    Table("deleted_threads", ("id",), ("id",), "deleted threads"),
)


def shown(url: str) -> str:
    """A database URL fit to print: its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


async def counts(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        return {
            table.name: int(await conn.scalar(sql(f"SELECT count(*) FROM {table.name}")) or 0)
            for table in TABLES
        }


async def _columns(db: Database, table: str) -> list[str]:
    async with db.read() as conn:
        result = await conn.execute(sql(f"SELECT * FROM {table} WHERE 1 = 0"))
        return [c for c in result.keys() if c != "seq"]


async def _copy_table(
    source: Database, target: Database, table: Table, report: Callable[[str], None]
) -> None:
    columns = await _columns(source, table.name)
    missing = set(columns) - set(await _columns(target, table.name))
    if missing:
        raise CopyError(f"the target's {table.name} has no column {', '.join(sorted(missing))}")
    order = ", ".join(table.order)
    after = f"({order}) > ({', '.join(f':after_{c}' for c in table.order)})"
    listed = ", ".join(columns)
    insert = sql(
        f"INSERT INTO {table.name} ({listed}) VALUES ({', '.join(f':{c}' for c in columns)})"
        f" ON CONFLICT ({', '.join(table.key)}) DO NOTHING"
    )
    last: dict[str, Any] | None = None
    done = 0
    while True:
        async with source.read() as conn:
            where = "" if last is None else f" WHERE {after}"
            rows = (
                await conn.execute(
                    sql(
                        f"SELECT {', '.join(dict.fromkeys([*columns, *table.order]))}"
                        f" FROM {table.name}{where} ORDER BY {order} LIMIT {BATCH}"
                    ),
                    last or {},
                )
            ).all()
        if not rows:
            break
        try:
            async with target.write() as conn:
                await conn.execute(insert, [{c: row._mapping[c] for c in columns} for row in rows])
        except SQLAlchemyError as exc:  # e.g. a user of the same name with another id
            reason = getattr(exc, "orig", None) or exc
            raise CopyError(
                f"the target refused {table.what} after the first {done:,}: {reason}"
            ) from None
        last = {f"after_{c}": rows[-1]._mapping[c] for c in table.order}
        done += len(rows)
        if done % (BATCH * 20) == 0:
            report(f"  {table.what}: {done:,}…")
    report(f"{table.what}: {done:,}")


async def rebuild_search(db: Database) -> int:
    """The search rows of every thread, made again from its name and messages; how many
    threads. Thread by thread in batches, so a re-run after an interruption redoes it."""
    last = 0
    threads = 0
    while True:
        async with db.write() as conn:
            done = await reindex_threads(conn, last, SEARCH_BATCH)
        if done is None:
            return threads
        last, count = done
        threads += count


async def copy_store(
    source: Database,
    target: Database,
    *,
    resume: bool = False,
    report: Callable[[str], None] = lambda line: None,
) -> dict[str, int]:
    """Copy every row of `source` into `target` (both migrated), then rebuild the target's
    search index; the rows per table. Refuses a target that holds anything unless
    `resume` (finishing an interrupted copy of the same source)."""
    if source.url == target.url:
        raise CopyError("the source and the target are the same database")
    before = await counts(target)
    if any(before.values()) and not resume:
        held = ", ".join(f"{before[t.name]:,} {t.what}" for t in TABLES if before[t.name])
        raise CopyError(
            f"the target already holds {held}; nothing was copied. To finish an interrupted"
            " copy from this source, run again with --resume"
        )
    for table in TABLES:
        await _copy_table(source, target, table, report)
    report(f"search: rebuilt for {await rebuild_search(target):,} threads")
    wanted, found = await counts(source), await counts(target)
    differ = [
        f"{t.what}: {wanted[t.name]:,} in the source, {found[t.name]:,} in the target"
        for t in TABLES
        if wanted[t.name] != found[t.name]
    ]
    if differ:
        raise CopyError(
            "the copy is not whole: "
            + "; ".join(differ)
            + ". Was the app still writing to the source, or did the target hold other data?"
            " Stop the app and run again with --resume"
        )
    return found


def summary(found: dict[str, int], tables: Sequence[Table] = TABLES) -> str:
    return "Copied " + ", ".join(f"{found[t.name]:,} {t.what}" for t in tables) + "."
