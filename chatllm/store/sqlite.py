"""SQLite: one file, written through a single connection on the event loop's own thread,
and read through others (aiosqlite, each in a thread of its own).

Why the writer is not aiosqlite: every statement through aiosqlite is a trip to its thread
and back through the event loop, a dozen for one message (BEGIN, each statement's cursor,
execute and fetch, COMMIT), and the write lock is held across all of them. Under load the
loop is slow to come back to each: with 25 users chatting, a user's message waited
0.7 s (median) for its turn at the lock while each write's own SQL took well under a
millisecond (bench/load.py). On the loop's thread a write runs in one go, its SQL for its
whole duration, and the loop serves the others in between; a long write (an import)
still lets the loop run every few milliseconds (`YIELD_AFTER`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from chatllm.store.dialect import Connection, Dialect, Writer
from chatllm.store.search import Term

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SyncConnection
    from sqlalchemy.engine import CursorResult
    from sqlalchemy.sql.base import Executable

#: How long a write waits for another process's write lock (a command, another worker).
BUSY_TIMEOUT_MS = 10_000
#: The longest a write transaction keeps the event loop before letting it run.
YIELD_AFTER = 0.004


class SQLite(Dialect):
    """Writes begin with BEGIN IMMEDIATE, taking the write lock up front: a transaction that
    starts as a read and later writes can fail at once with "database is locked" whatever
    the busy timeout, one that asks for the lock first waits its turn instead. One writer
    connection also serialises this process's writes without touching the lock."""

    name = "sqlite"
    for_update = ""  # the write lock is the whole file's, taken at BEGIN
    warm_connections = 1  # a reader (its thread); the writer opens at its first write

    def writer(self, url: str) -> Writer:
        _create(url)
        return LoopWriter(url)

    def reader(self, url: str) -> AsyncEngine:
        _create(url)
        engine = create_async_engine(url)
        _configure(engine.sync_engine, immediate=False, busy_timeout_ms=BUSY_TIMEOUT_MS)
        return engine

    def match(self, term: Term, param: str) -> tuple[str, str]:
        # An FTS5 string: a phrase of the words in order, `*` for a prefix. The words are
        # letters and digits only (chatllm.store.search), so no quote can be inside.
        phrase = '"' + " ".join(term.words) + '"' + ("*" if term.prefix else "")
        return f"search MATCH :{param}", phrase

    def json_flag(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}') = 1"

    async def serialize(self, conn: Connection, names: list[str]) -> None:
        """Nothing: every write transaction holds the whole file's write lock."""

    async def before_migration(self, conn: Connection) -> None:
        """Nothing: the transaction began with the file's write lock, which another
        process starting at the same moment waits for."""


class LoopWriter(Writer):
    """Write transactions on one connection, run on the event loop's thread, one at a time.

    Waiting for another process's write lock must not stop the loop, so the connection's
    busy timeout is zero and a write that finds the file locked tries again after a short
    sleep, for up to `BUSY_TIMEOUT_MS`."""

    def __init__(self, url: str) -> None:
        # The same file through the standard library's driver, without a thread.
        self.sync_engine = create_engine(
            make_url(url).set(drivername="sqlite+pysqlite"), poolclass=StaticPool
        )
        _configure(self.sync_engine, immediate=True, busy_timeout_ms=0)
        self._turn = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._turn:
            conn = await self._begin()
            try:
                yield LoopConnection(conn)
            except BaseException:
                conn.rollback()
                raise
            else:
                conn.commit()
            finally:
                conn.close()

    async def _begin(self) -> SyncConnection:
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.001
        while True:
            conn = self.sync_engine.connect()
            try:
                conn.begin()  # BEGIN IMMEDIATE: the write lock, or "database is locked"
                return conn
            except OperationalError as exc:
                conn.close()
                if "locked" not in str(exc.orig) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    async def close(self) -> None:
        self.sync_engine.dispose()


class LoopConnection:
    """A write transaction's connection whose statements run at once, on the loop's thread;
    one that has kept the loop `YIELD_AFTER` lets it run before its next statement (and
    is where a cancellation reaches a long write)."""

    def __init__(self, conn: SyncConnection) -> None:
        self._conn = conn
        self._since = time.perf_counter()

    async def _turn(self) -> None:
        if time.perf_counter() - self._since > YIELD_AFTER:
            await asyncio.sleep(0)
            self._since = time.perf_counter()

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        await self._turn()
        return self._conn.execute(statement, parameters)

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any:
        await self._turn()
        return self._conn.scalar(statement, parameters)


def _create(url: str) -> None:
    path = sqlite_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and make_url(url).query.get("mode") != "ro":
        # Chats and password hashes: readable by the owner only. SQLite gives its -wal
        # and -shm files the same permissions.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _switch_to_wal(cursor: Any) -> None:
    """WAL mode (once per file; it is kept). Two processes switching a new file at the same
    moment can deadlock, and SQLite then answers one of them "database is locked" at once,
    whatever the busy timeout: that one tries again."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.fetchall()
        except Exception as exc:  # the driver's OperationalError (sqlite3's, or aiosqlite's)
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _configure(engine: Engine, *, immediate: bool, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is off; BEGIN is ours (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # A timeout first: switching a new file to WAL waits for the lock like any write
        # (another process starting at the same moment may hold it).
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def sqlite_path(url: str) -> Path:
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:":
        # Readers and the writer are separate connections; they must share a file.
        raise ValueError("The database must be a file, e.g. sqlite+aiosqlite:///data/chatllm.db")
    return Path(database.removeprefix("file:"))  # an SQLite URI (…?mode=ro&uri=true)
