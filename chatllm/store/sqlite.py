"""SQLite: one file, written through a single connection and read through others."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from chatllm.store.dialect import Dialect
from chatllm.store.search import Term

BUSY_TIMEOUT_MS = 10_000


class SQLite(Dialect):
    """Writes begin with BEGIN IMMEDIATE, taking the write lock up front: a transaction that
    starts as a read and later writes can fail at once with "database is locked" whatever
    the busy timeout, one that asks for the lock first waits its turn instead. One writer
    connection also serialises this process's writes without touching the lock."""

    name = "sqlite"
    one_writer = True
    for_update = ""  # the write lock is the whole file's, taken at BEGIN

    def engines(self, url: str) -> tuple[AsyncEngine, AsyncEngine]:
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() and make_url(url).query.get("mode") != "ro":
            # Chats and password hashes: readable by the owner only. SQLite gives its
            # -wal and -shm files the same permissions.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return (
            _engine(url, immediate=True, poolclass=StaticPool),
            _engine(url, immediate=False, poolclass=None),
        )

    def match(self, term: Term, param: str) -> tuple[str, str]:
        # An FTS5 string: a phrase of the words in order, `*` for a prefix. The words are
        # letters and digits only (chatllm.store.search), so no quote can be inside.
        phrase = '"' + " ".join(term.words) + '"' + ("*" if term.prefix else "")
        return f"search MATCH :{param}", phrase

    def json_flag(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}') = 1"

    async def serialize(self, conn: AsyncConnection, names: list[str]) -> None:
        """Nothing: every write transaction holds the whole file's write lock."""

    async def before_migration(self, conn: AsyncConnection) -> None:
        """Nothing: the transaction began with the file's write lock, which another
        process starting at the same moment waits for."""


def _engine(url: str, *, immediate: bool, poolclass: Any) -> AsyncEngine:
    options: dict[str, Any] = {}
    if poolclass is not None:
        options["poolclass"] = poolclass
    engine = create_async_engine(url, **options)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is off; BEGIN is ours (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The timeout first: switching a new file to WAL waits for the lock like any
        # write (another process starting at the same moment may hold it).
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def sqlite_path(url: str) -> Path:
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:":
        # Readers and the writer are separate connections; they must share a file.
        raise ValueError("The database must be a file, e.g. sqlite+aiosqlite:///data/chatllm.db")
    return Path(database.removeprefix("file:"))  # an SQLite URI (…?mode=ro&uri=true)
