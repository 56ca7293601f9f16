"""PostgreSQL (asyncpg): a pool of connections; the database orders concurrent writes.

Writes run in READ COMMITTED transactions from any number of processes at once; where a
write reads a row and then changes what depends on it (a thread's owner and metadata, a
step's feedback, a user's presets) it locks that row first with SELECT … FOR UPDATE, so
writers of one thread take turns while other threads' go on. Reads run in REPEATABLE READ
transactions: one snapshot for the thread and its steps. Migrations hold an advisory lock,
so workers starting together apply each one once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chatllm.store.dialect import Connection, Dialect, Writer, sql
from chatllm.store.search import Term, rows_of_thread

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

#: The advisory lock migrations take (any fixed number, the same in every process).
MIGRATION_LOCK = 0x636861746C6C6D  # "chatllm"

#: Connections each process keeps; a busy app's writes and reads share them.
POOL_SIZE = 10
POOL_OVERFLOW = 20


class PostgreSQL(Dialect):
    name = "postgresql"
    for_update = " FOR UPDATE"
    # A full pool, so that the users arriving first need not each open a connection. Their
    # first replies are still slower than later ones (bench/load.py, 10 users on two
    # workers: 252 ms added to the first token against 39 ms; 282 ms without this): most
    # of that is the thread's creation, not the connections.
    warm_connections = POOL_SIZE

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None

    def _pool(self, url: str) -> AsyncEngine:
        # One pool for writes and reads.
        if self._engine is None:
            self._engine = create_async_engine(
                url,
                pool_size=POOL_SIZE,
                max_overflow=POOL_OVERFLOW,
                pool_pre_ping=True,  # a restarted server's dead connections are replaced
                connect_args={"server_settings": {"application_name": "chatllm"}},
            )
        return self._engine

    def writer(self, url: str) -> Writer:
        return PoolWriter(self._pool(url))

    def reader(self, url: str) -> AsyncEngine:
        return self._pool(url).execution_options(isolation_level="REPEATABLE READ")

    def match(self, term: Term, param: str) -> tuple[str, str]:
        # A tsquery: the words joined by "followed by", `:*` for a prefix. The words are
        # letters and digits only (chatllm.store.search), so no quote can be inside.
        query = " <-> ".join(f"'{word}'" for word in term.words)
        return f"words @@ to_tsquery('simple', :{param})", query + (":*" if term.prefix else "")

    # A word in many threads is found fastest by testing the newest threads one by one
    # through their own rows' key range (a page found in the first few hundred or
    # thousand), a rare one by reading every matching row through the GIN index. The
    # planner cannot choose between them here: it misjudges how many rows a tsquery or a
    # thread's key range selects (a Chinese phrase in 10,000 threads was taken for 21 rows,
    # and a seq scan of every row followed, 1.3 s), and as "IN (the threads of every
    # matching row)" it had only the second way (200 ms for a word in 1 % of a million
    # threads; bench/threads.py). So a search tests this many threads first, then reads
    # the matching rows of the older ones.
    search_walk = 4000

    async def walking(self, conn: Connection, on: bool) -> None:
        # Without bitmap scans the GIN index is out of reach (it has no other kind), so each
        # thread is tested through the primary key's range; and one process, not three, as
        # the walk stops early.
        value = "off" if on else "on"
        await conn.execute(sql(f"SET LOCAL enable_bitmapscan = {value}"))
        workers = "0" if on else "DEFAULT"
        await conn.execute(sql(f"SET LOCAL max_parallel_workers_per_gather TO {workers}"))

    def thread_test(self, match: str, alias: str) -> str:
        return (
            f"CROSS JOIN LATERAL (SELECT 1 FROM search WHERE {rows_of_thread('t.seq')}"
            f" AND {match} LIMIT 1) {alias}"
        )

    def json_flag(self, column: str, key: str) -> str:
        # JSON holds a NUL as the escape \u0000, which text keeps but jsonb refuses ("cannot
        # be converted to text"): one such value would fail the whole query. Replaced by
        # the escape of U+FFFD, of the same shape, the text is valid JSON still.
        storable = f"replace({column}, '\\u0000', '\\ufffd')"
        return f"({storable})::jsonb @> '{{\"{key}\": true}}'::jsonb"

    async def serialize(self, conn: Connection, names: list[str]) -> None:
        # Transaction-level advisory locks on the names' hashes, always in one order (no
        # two writers can wait for each other); released at commit or rollback.
        for name in sorted(set(names)):
            await conn.execute(sql("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})

    async def before_migration(self, conn: Connection) -> None:
        await conn.execute(sql("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})


class PoolWriter(Writer):
    """Write transactions on the pool's connections, as many at once as the pool holds."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sync_engine = engine.sync_engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    async def close(self) -> None:
        await self.engine.dispose()
