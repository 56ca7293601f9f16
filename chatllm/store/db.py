"""The database: engines, transactions, one-statement helpers, migrations.

SQLAlchemy Core over aiosqlite (SQLite, the default) or asyncpg (PostgreSQL); what differs
between them is in their dialect (chatllm.store.dialect).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Row, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatllm.clock import utc_now
from chatllm.errors import ChatLLMError, StoreError
from chatllm.store.dialect import Connection, Dialect, Writer, dialect_for, sql
from chatllm.store.migrations import MIGRATIONS

log = logging.getLogger("chatllm.store")

P = ParamSpec("P")
R = TypeVar("R")

#: What U+0000 is stored as, on every database. PostgreSQL's text cannot hold it (SQLite's
#: can): a pasted NUL or the model's `<0x00>` byte token made the write of a message fail
#: there, and a copy of an SQLite store holding one stop at that row. U+FFFD, the
#: replacement character, rather than nothing: the reader still sees that something was
#: there, and the text keeps its length and its word breaks (dropped, "a\0b" would be
#: stored, shown and indexed as the one word "ab").
NUL_STORED_AS = "\ufffd"
#: What neither database's driver can write: U+0000, and a lone UTF-16 surrogate (JSON's
#: "\ud800" arrives over the socket as one; neither driver can encode it, so the write
#: failed on both). Each is stored as `NUL_STORED_AS`.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` as every database the store runs on can hold it."""
    return _UNSTORABLE.sub(NUL_STORED_AS, text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _unstorable(text: str) -> bool:
    # A surrogate is looked for in non-ASCII text alone (`isascii` is a flag CPython
    # keeps): a regular expression over every value took 5 µs a message row, against
    # 0.9 µs for `in` alone.
    return "\x00" in text or (not text.isascii() and _SURROGATE.search(text) is not None)


def _holds_unstorable(row: Any) -> bool:
    for value in row.values() if isinstance(row, Mapping) else row:
        if isinstance(value, str) and _unstorable(value):
            return True
    return False


def _storable_row(row: Any) -> Any:
    if isinstance(row, Mapping):
        return {k: storable(v) if isinstance(v, str) else v for k, v in row.items()}
    return type(row)(storable(v) if isinstance(v, str) else v for v in row)


def _storable_parameters(
    _conn: Any,
    _cursor: Any,
    statement: str,
    parameters: Any,
    _context: Any,
    executemany: bool,
) -> tuple[str, Any]:
    """SQLAlchemy's `before_cursor_execute` (with `retval`): the values of a statement, or
    of each row of an executemany, as the driver is to send them, made `storable`. Checked
    string by string and copied only where one holds a NUL: next to nothing per write."""
    if executemany:
        if any(map(_holds_unstorable, parameters)):
            parameters = [_storable_row(row) for row in parameters]
    elif parameters and _holds_unstorable(parameters):
        parameters = _storable_row(parameters)
    return statement, parameters


class Database:
    """The store's database at `url`: SQLite or PostgreSQL, by the URL's scheme."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect: Dialect = dialect_for(url)
        self.writer: Writer = self.dialect.writer(url)
        self.reader: AsyncEngine = self.dialect.reader(url)
        # The one place text is made storable: below every write, the data layer's, the
        # commands' and `db copy`'s into its target alike, so SQLite stores what PostgreSQL
        # would and either gives the same text back. (PostgreSQL's reads share the writer's
        # engine, so their values are made storable too; SQLite's are not, so that a copy
        # from a store written before this pages through its rows by their keys as they are.)
        event.listen(
            self.writer.sync_engine, "before_cursor_execute", _storable_parameters, retval=True
        )

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        """A write transaction; it commits on exit, rolls back and re-raises on error.
        On SQLite it holds the write lock, and this process's writers take turns on one
        connection (Chainlit fires several writes at once as tasks)."""
        async with self.writer.transaction() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A consistent snapshot for reading."""
        async with self.reader.begin() as conn:
            yield conn

    # One statement in a transaction of its own: the boilerplate of most reads and writes.

    async def first(
        self, statement: str, params: Mapping[str, Any] | None = None
    ) -> Row[Any] | None:
        """The first row a read gives, if any."""
        async with self.read() as conn:
            return (await conn.execute(sql(statement), dict(params or {}))).first()

    async def rows(self, statement: str, params: Mapping[str, Any] | None = None) -> list[Row[Any]]:
        """Every row a read gives."""
        async with self.read() as conn:
            return list((await conn.execute(sql(statement), dict(params or {}))).all())

    async def value(self, statement: str, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row a read gives (None if no row)."""
        async with self.read() as conn:
            return await conn.scalar(sql(statement), dict(params or {}))

    async def execute(self, statement: str, params: Mapping[str, Any] | None = None) -> int:
        """A write; how many rows it changed."""
        async with self.write() as conn:
            return int((await conn.execute(sql(statement), dict(params or {}))).rowcount)

    async def returning(
        self, statement: str, params: Mapping[str, Any] | None = None
    ) -> Row[Any] | None:
        """A write with RETURNING; the first row it returned, if any."""
        async with self.write() as conn:
            return (await conn.execute(sql(statement), dict(params or {}))).first()

    async def warm(self) -> None:
        """Open the connections the dialect keeps ready, at once, into the pool: the first
        users of a fresh worker then wait for none."""
        async with AsyncExitStack() as held:
            await asyncio.gather(
                *(
                    held.enter_async_context(self.reader.connect())
                    for _ in range(self.dialect.warm_connections)
                )
            )

    async def migrate(self) -> list[str]:
        """Apply the migrations not yet recorded, each with its record in one transaction."""
        applied_now: list[str] = []
        async with self.write() as conn:
            # Under the migrations' lock too: two PostgreSQL sessions creating one table
            # at once collide even with IF NOT EXISTS.
            await self.dialect.before_migration(conn)
            await conn.execute(
                sql(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
            )
        for number, migration in enumerate(MIGRATIONS, start=1):
            async with self.write() as conn:
                await self.dialect.before_migration(conn)
                done = await conn.scalar(
                    sql("SELECT 1 FROM schema_migrations WHERE number = :n"), {"n": number}
                )
                if done:
                    continue
                for statement in migration.for_dialect(self.dialect.name):
                    await conn.execute(sql(statement))
                if migration.then is not None:
                    await migration.then(conn)
                await conn.execute(
                    sql(
                        "INSERT INTO schema_migrations (number, name, applied_at)"
                        " VALUES (:n, :name, :now)"
                    ),
                    {"n": number, "name": migration.name, "now": utc_now()},
                )
            log.info("Applied migration %d: %s", number, migration.name)
            applied_now.append(migration.name)
        return applied_now

    async def applied(self) -> list[tuple[int, str]]:
        async with self.read() as conn:
            rows = await conn.execute(
                sql("SELECT number, name FROM schema_migrations ORDER BY number")
            )
            return [(int(number), str(name)) for number, name in rows]

    async def close(self) -> None:
        await self.writer.close()
        await self.reader.dispose()


def writes(
    what: str,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """A write whose failure is logged, then raised as a `StoreError` saying `what` ("the
    message could not be saved"); the app's own refusals (a `ChatLLMError`) go through as
    they are. Logged because Chainlit runs most writes as tasks nobody awaits, where an
    exception would otherwise go unseen; wrapped so that every caller that does await
    catches one kind of error, whatever the driver raised."""

    def decorate(
        method: Callable[P, Coroutine[Any, Any, R]],
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(method)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await method(*args, **kwargs)
            except ChatLLMError as exc:
                log.error("Refused %s: %s", method.__name__, exc)
                raise
            except Exception as exc:
                # The driver's own words, not SQLAlchemy's, which add the SQL and its values
                # (message text: not for the log, nor for the user).
                reason = getattr(exc, "orig", None) or exc
                log.error(
                    "Database write %s failed: %s",
                    method.__name__,
                    reason,
                    exc_info=(type(reason), reason, reason.__traceback__),
                )
                raise StoreError(f"{what} ({reason})") from exc

        return wrapper

    return decorate


@asynccontextmanager
async def migrated(url: str) -> AsyncIterator[Database]:
    """The database at `url`, its schema brought up to date; closed when the block ends.
    The one way the app and its commands open a store."""
    database = Database(url)
    try:
        await database.migrate()
        yield database
    finally:
        await database.close()
