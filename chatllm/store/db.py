"""The SQLite database: engines, connection settings, transactions, migrations.

SQLAlchemy Core over aiosqlite keeps the SQL portable to PostgreSQL (asyncpg) later.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Row, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from chatllm.errors import ChatLLMError, StoreError
from chatllm.store.migrations import MIGRATIONS

log = logging.getLogger("chatllm.store")

P = ParamSpec("P")
R = TypeVar("R")

BUSY_TIMEOUT_MS = 10_000


class Database:
    """One SQLite file, written through a single connection and read through others.

    Writes begin with BEGIN IMMEDIATE, taking the write lock up front: a transaction that
    starts as a read and later writes can fail at once with "database is locked" whatever
    the busy timeout, one that asks for the lock first waits its turn instead. One writer
    connection also serialises this process's writes without touching the lock.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = _sqlite_path(url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() and make_url(url).query.get("mode") != "ro":
            # Chats and password hashes: readable by the owner only. SQLite gives its
            # -wal and -shm files the same permissions.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.writer = self._engine(immediate=True, poolclass=StaticPool)
        self._writing = asyncio.Lock()
        self.reader = self._engine(immediate=False, poolclass=None)

    def _engine(self, *, immediate: bool, poolclass: Any) -> AsyncEngine:
        options: dict[str, Any] = {}
        if poolclass is not None:
            options["poolclass"] = poolclass
        engine = create_async_engine(self.url, **options)

        @event.listens_for(engine.sync_engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # The driver's own transaction handling is off; BEGIN is ours (below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction holding the write lock; it commits on exit, rolls back and
        re-raises on error. The writer is one shared connection, so this process's writers
        take turns (Chainlit fires several writes at once as tasks)."""
        async with self._writing, self.writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A consistent snapshot for reading."""
        async with self.reader.begin() as conn:
            yield conn

    # One statement in a transaction of its own: the boilerplate of most reads and writes.

    async def first(self, sql: str, params: Mapping[str, Any] | None = None) -> Row[Any] | None:
        """The first row a read gives, if any."""
        async with self.read() as conn:
            return (await conn.execute(text(sql), dict(params or {}))).first()

    async def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row[Any]]:
        """Every row a read gives."""
        async with self.read() as conn:
            return list((await conn.execute(text(sql), dict(params or {}))).all())

    async def value(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row a read gives (None if no row)."""
        async with self.read() as conn:
            return await conn.scalar(text(sql), dict(params or {}))

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """A write; how many rows it changed."""
        async with self.write() as conn:
            return int((await conn.execute(text(sql), dict(params or {}))).rowcount)

    async def returning(self, sql: str, params: Mapping[str, Any] | None = None) -> Row[Any] | None:
        """A write with RETURNING; the first row it returned, if any."""
        async with self.write() as conn:
            return (await conn.execute(text(sql), dict(params or {}))).first()

    async def migrate(self) -> list[str]:
        """Apply the migrations not yet recorded, each with its record in one transaction."""
        applied_now: list[str] = []
        async with self.write() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
            )
        for number, migration in enumerate(MIGRATIONS, start=1):
            async with self.write() as conn:
                done = await conn.scalar(
                    text("SELECT 1 FROM schema_migrations WHERE number = :n"), {"n": number}
                )
                if done:
                    continue
                for statement in migration.statements:
                    await conn.execute(text(statement))
                await conn.execute(
                    text(
                        "INSERT INTO schema_migrations (number, name, applied_at)"
                        " VALUES (:n, :name, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
                    ),
                    {"n": number, "name": migration.name},
                )
            log.info("Applied migration %d: %s", number, migration.name)
            applied_now.append(migration.name)
        return applied_now

    async def applied(self) -> list[tuple[int, str]]:
        async with self.read() as conn:
            rows = await conn.execute(
                text("SELECT number, name FROM schema_migrations ORDER BY number")
            )
            return [(int(number), str(name)) for number, name in rows]

    async def close(self) -> None:
        await self.writer.dispose()
        await self.reader.dispose()


def _sqlite_path(url: str) -> Path:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        raise ValueError(f"Only SQLite URLs are supported for now, not {parsed.drivername!r}")
    database = parsed.database
    if not database or database == ":memory:":
        # Readers and the writer are separate connections; they must share a file.
        raise ValueError("The database must be a file, e.g. sqlite+aiosqlite:///data/chatllm.db")
    return Path(database.removeprefix("file:"))  # an SQLite URI (…?mode=ro&uri=true)


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
