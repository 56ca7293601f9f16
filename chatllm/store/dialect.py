"""What differs between the databases the store runs on, behind one interface.

The store's SQL is written once, in the subset SQLite and PostgreSQL share (`ON CONFLICT`
upserts, `RETURNING`, row-value comparisons); what they do differently sits in one module
per database, `store/sqlite.py` and `store/postgresql.py`: how connections are opened and
writes serialised, how search matches, how a row is locked for the rest of a write, and
the migrations' statements where their DDL differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from chatllm.store.search import Term


class Dialect(ABC):
    #: The key of this database's statements in a migration (see migrations.py).
    name: str
    #: Whether this process must send its writes one at a time (SQLite: one writer per
    #: file) rather than let the database order them (row locks).
    one_writer: bool
    #: Appended to a SELECT inside a write to lock the rows it read until the write ends.
    for_update: str

    @abstractmethod
    def engines(self, url: str) -> tuple[AsyncEngine, AsyncEngine]:
        """The engine writes go through, and the one reads go through (a consistent
        snapshot per read)."""

    @abstractmethod
    def match(self, term: Term, param: str) -> tuple[str, str]:
        """A condition on a `search` row, true where its text holds `term`; and the value
        to bind to `param` in it."""

    @abstractmethod
    def json_flag(self, column: str, key: str) -> str:
        """A condition: the JSON object in `column` has `key` set to true."""

    @abstractmethod
    async def serialize(self, conn: AsyncConnection, names: list[str]) -> None:
        """Make the rest of this write transaction take turns with every other write that
        serializes on one of `names`, in any process (a count checked, then added to)."""

    @abstractmethod
    async def before_migration(self, conn: AsyncConnection) -> None:
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
