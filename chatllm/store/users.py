"""Password users: add, remove, reset, and the stored Argon2 hash."""

from __future__ import annotations

import json
import time
import uuid

from chatllm.clock import utc_now
from chatllm.errors import ChatLLMError
from chatllm.store.db import Database, writes
from chatllm.store.dialect import sql
from chatllm.store.files import FileStore
from chatllm.store.search import thread_rowids


class UserExists(ChatLLMError):
    """A user with that name is already there."""


class NoSuchUser(ChatLLMError):
    """No user has that name."""


class Users:
    def __init__(self, db: Database, files: FileStore) -> None:
        self.db = db
        self.files = files

    @writes("the user could not be added")
    async def add(self, identifier: str, password_hash: str) -> None:
        async with self.db.write() as conn:
            exists = await conn.scalar(
                sql("SELECT 1 FROM users WHERE identifier = :i"), {"i": identifier}
            )
            if exists:
                raise UserExists(f"the user {identifier!r} already exists")
            await conn.execute(
                sql(
                    "INSERT INTO users (id, identifier, password_hash, metadata, created_at)"
                    " VALUES (:id, :i, :hash, :metadata, :now)"
                ),
                {
                    "id": str(uuid.uuid4()),
                    "i": identifier,
                    "hash": password_hash,
                    "metadata": json.dumps({}),
                    "now": utc_now(),
                },
            )

    @writes("the password could not be saved")
    async def set_password(self, identifier: str, password_hash: str) -> None:
        changed = await self.db.execute(
            # Every session begun with the old password ends.
            "UPDATE users SET password_hash = :hash, sessions_valid_after = :now"
            " WHERE identifier = :i",
            {"hash": password_hash, "i": identifier, "now": int(time.time() * 1000)},
        )
        if not changed:
            raise NoSuchUser(f"there is no user {identifier!r}")

    @writes("the user could not be removed")
    async def remove(self, identifier: str) -> None:
        """Remove the user with their threads, search entries and files."""
        owned = (
            "SELECT t.id FROM threads t JOIN users u ON u.id = t.user_id WHERE u.identifier = :i"
        )
        async with self.db.write() as conn:
            keys = [
                str(row.object_key)
                for row in await conn.execute(
                    sql(
                        f"SELECT object_key FROM elements WHERE thread_id IN ({owned})"
                        " AND object_key IS NOT NULL"
                    ),
                    {"i": identifier},
                )
            ]
            seqs = await conn.execute(
                sql(f"SELECT seq FROM threads WHERE id IN ({owned})"), {"i": identifier}
            )
            for (seq,) in seqs.all():
                first, last = thread_rowids(seq)
                await conn.execute(
                    sql("DELETE FROM search WHERE rowid BETWEEN :first AND :last"),
                    {"first": first, "last": last},
                )
            # Their ids stay deleted: a reply still streaming must not bring one back.
            await conn.execute(
                sql(
                    "INSERT INTO deleted_threads (id, deleted_at)"
                    f" SELECT id, :now FROM threads WHERE id IN ({owned})"
                    " ON CONFLICT (id) DO NOTHING"
                ),
                {"i": identifier, "now": utc_now()},
            )
            # Threads, steps, feedback and elements follow by ON DELETE CASCADE.
            result = await conn.execute(
                sql("DELETE FROM users WHERE identifier = :i"), {"i": identifier}
            )
            if not result.rowcount:
                raise NoSuchUser(f"there is no user {identifier!r}")
        for key in keys:
            self.files.delete(key)

    @writes("the logout could not be recorded")
    async def end_session(self, login: str, expires_at: int) -> None:
        """Refuse the token of this login from now on (until it would have expired)."""
        async with self.db.write() as conn:
            await conn.execute(
                sql("DELETE FROM ended_sessions WHERE expires_at < :now"),
                {"now": int(time.time())},
            )
            await conn.execute(
                sql(
                    "INSERT INTO ended_sessions (login, expires_at) VALUES (:login, :expires)"
                    " ON CONFLICT (login) DO NOTHING"
                ),
                {"login": login, "expires": expires_at},
            )

    async def session_ended(
        self, identifier: str, issued_ms: int, login: str | None
    ) -> bool | None:
        """Whether a token of `identifier` issued at `issued_ms` (epoch milliseconds) for
        `login` no longer counts (logged out, or issued before the password's last
        reset); None if there is no such user."""
        row = await self.db.first(
            "SELECT u.sessions_valid_after,"
            " EXISTS (SELECT 1 FROM ended_sessions WHERE login = :login) AS ended"
            " FROM users u WHERE u.identifier = :i",
            {"i": identifier, "login": login or ""},
        )
        if row is None:
            return None
        return bool(row.ended) or issued_ms < int(row.sessions_valid_after)

    async def thread_count(self, identifier: str) -> int:
        """How many threads the user has; NoSuchUser if there is no such user."""
        row = await self.db.first(
            "SELECT count(t.id) AS n FROM users u LEFT JOIN threads t ON t.user_id = u.id"
            " WHERE u.identifier = :i GROUP BY u.id",
            {"i": identifier},
        )
        if row is None:
            raise NoSuchUser(f"there is no user {identifier!r}")
        return int(row.n)

    async def password_hash(self, identifier: str) -> str | None:
        value = await self.db.value(
            "SELECT password_hash FROM users WHERE identifier = :i", {"i": identifier}
        )
        return None if value is None else str(value)

    async def with_passwords(self) -> list[str]:
        rows = await self.db.rows(
            "SELECT identifier FROM users WHERE password_hash IS NOT NULL ORDER BY identifier"
        )
        return [str(row.identifier) for row in rows]
