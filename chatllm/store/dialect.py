"""What differs between the databases the store runs on, behind one interface.

The store's SQL is written once, in the subset SQLite and PostgreSQL share (`ON CONFLICT`
upserts, `RETURNING`, row-value comparisons); what they do differently sits in one module
per database, `store/sqlite.py` and `store/postgresql.py`: how connections are opened and
writes serialised, how search matches, how a row is locked for the rest of a write, and
the migrations' statements where their DDL differs.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import TextClause, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.sql.base import Executable

    from chatllm.store.search import Term


@functools.lru_cache(maxsize=1024)
def sql(statement: str) -> TextClause:
    """The statement as SQLAlchemy runs it, made once per distinct text: building a
    `text()` parses its bind parameters each time, and a step's write (create, then
    update) took 0.76 ms of CPU with these kept against 1.05 ms without. Statements are
    immutable (binding returns a new one), so one is shared by every caller; the few
    built per request (a search's terms, a page's cursor) stay within the bound."""
    return text(statement)


class Connection(Protocol):
    """What the store's SQL runs on: a read's or a write transaction's connection (an
    `AsyncConnection`, or SQLite's writer on the event loop's thread)."""

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]: ...

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any: ...


class Writer(ABC):
    """Where write transactions come from."""

    #: The engine under it, for SQLAlchemy's events (text made storable, `Database`; a
    #: test's hooks).
    sync_engine: Engine

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """A write transaction; it commits on exit, rolls back and re-raises on error."""

    @abstractmethod
    async def close(self) -> None:
        """Close its connections."""


class Dialect(ABC):
    #: The key of this database's statements in a migration (see migrations.py).
    name: str
    #: Appended to a SELECT inside a write to lock the rows it read until the write ends.
    for_update: str
    #: Connections to open before the first user arrives (`Database.warm`).
    warm_connections: int

    @abstractmethod
    def writer(self, url: str) -> Writer:
        """Where writes go through."""

    @abstractmethod
    def reader(self, url: str) -> AsyncEngine:
        """The engine reads go through (a consistent snapshot per read)."""

    @abstractmethod
    def match(self, term: Term, param: str) -> tuple[str, str]:
        """A condition on a `search` row, true where its text holds `term`; and the value
        to bind to `param` in it."""

    #: How many of a user's newest threads a search tests one by one (a page's worth found,
    #: it stops) before it reads every matching row instead; None: it always reads every
    #: matching row (see `ChatDataLayer.list_threads`).
    search_walk: int | None = None

    async def walking(self, conn: Connection, on: bool) -> None:
        """Set the rest of this read transaction to test threads one by one (`on`), or back
        to the database's own choices. Only called where `search_walk` is set."""
        raise NotImplementedError

    def thread_test(self, match: str, alias: str) -> str:
        """A join (named `alias`) that keeps a thread `t` only if one of its search rows meets
        the condition `match`, testing that thread's rows alone. Only called where
        `search_walk` is set."""
        raise NotImplementedError

    @abstractmethod
    def json_flag(self, column: str, key: str) -> str:
        """A condition: the JSON object in `column` has `key` set to true."""

    @abstractmethod
    async def serialize(self, conn: Connection, names: list[str]) -> None:
        """Make the rest of this write transaction take turns with every other write that
        serializes on one of `names`, in any process (a count checked, then added to)."""

    @abstractmethod
    async def before_migration(self, conn: Connection) -> None:
        """Called first in each migration's transaction (e.g. to take a lock, so that two
        processes starting at once do not apply one migration twice)."""


def dialect_for(url: str) -> Dialect:
    """The dialect of a database URL (`sqlite+aiosqlite:///…`, `postgresql+asyncpg://…`)."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        from chatllm.store.sqlite import SQLite

        return SQLite()
    if backend == "postgresql":
        from chatllm.store.postgresql import PostgreSQL

        return PostgreSQL()
    raise ValueError(
        f"CHATLLM_DATABASE_URL names {backend!r}; chatllm stores threads in SQLite"
        " (sqlite+aiosqlite:///path) or PostgreSQL (postgresql+asyncpg://user@host/db)"
    )
