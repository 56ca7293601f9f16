"""A thread's row as a write finds it: its owner checked (and set once, to the acting
user), the row locked for the write, made when new but never again once deleted, and the
thread's own write (name, tags, metadata merged: the app's keys apart from Chainlit's,
credentials and live session state never stored).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from chainlit.user import PersistedUser

from chatllm.clock import utc_now
from chatllm.errors import ChatLLMError, ThreadDeleted
from chatllm.store.db import Database
from chatllm.store.dialect import Connection, sql
from chatllm.store.search import index_text, name_rowid
from chatllm.store.tree import TreeChange

# Keys that may hold credentials; Chainlit copies the whole user session into thread
# metadata, so they are dropped before anything is written.
SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization|^env$)", re.I)

#: The longest thread name kept: a longer one is cut there.
MAX_THREAD_NAME = 255


class ThreadAccessDenied(ChatLLMError, PermissionError):
    """A write aimed at a thread that belongs to another user."""


class LockedThread(NamedTuple):
    """A thread's row as a write found it (and locked it, on PostgreSQL)."""

    seq: int
    user_id: str | None
    metadata: str  # JSON
    active_leaf_id: str | None = None
    branch_choices: str = "{}"  # JSON


#: Thread metadata the app writes and keeps current itself (`save_thread_metadata`, and a
#: message's write): the chat's sliders and model, the sharing flags; and the chosen
#: replies of threads before trees (migration 7 made them the thread's `branch_choices`),
#: listed so that a session copied before the upgrade cannot write them back.
#: Chainlit copies a thread's metadata into the session when the thread is reopened and
#: writes that copy back when the tab closes (`update_thread`): it would put back a
#: sharing that was stopped, or a reply choice made since. Chainlit's own writes leave
#: these keys alone.
APP_METADATA = frozenset(
    {"chat_settings", "chat_profile", "chosen_replies", "is_shared", "shared_at"}
)


def chainlit_owned(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Of metadata Chainlit writes, what it may change: not the app's keys."""
    return {k: v for k, v in metadata.items() if k not in APP_METADATA}


#: User-session keys under this prefix hold the app's live state (the model's memory, the
#: sampling object); resume rebuilds them from the steps and chat_settings, so Chainlit's
#: copy of the session into thread metadata leaves them out.
SESSION_ONLY_PREFIX = "chatllm."


def scrub(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metadata without credentials or live session state."""
    return {
        k: v
        for k, v in (metadata or {}).items()
        if not SECRET_KEY.search(str(k)) and not str(k).startswith(SESSION_ONLY_PREFIX)
    }


def _acting_user_id() -> str | None:
    """The persisted user of the websocket session this call runs in, if any."""
    from chainlit.context import ChainlitContextException, context
    from chainlit.session import WebsocketSession

    try:
        session = context.session
    except ChainlitContextException:
        return None
    if isinstance(session, WebsocketSession) and isinstance(session.user, PersistedUser):
        return session.user.id
    return None


class ThreadRows:
    """The `threads` table as every write reaches it (a thread's own, a step's, an
    element's): the owner checked, the row locked."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def ensure_thread(self, conn: Connection, thread_id: str) -> LockedThread:
        """Create the thread if it is new (owned by the acting user); refuse another's.
        Returns the thread as found. Its row stays locked until the write ends
        (PostgreSQL), so writes to one thread take turns."""
        thread = await self.locked_thread(conn, thread_id)
        acting = _acting_user_id()
        if thread is None:
            return await self._new_thread(conn, thread_id, acting)
        if thread.user_id is not None and acting is not None and thread.user_id != acting:
            raise ThreadAccessDenied(f"thread {thread_id} belongs to another user")
        return thread

    async def locked_thread(self, conn: Connection, thread_id: str) -> LockedThread | None:
        """The thread's seq, owner and metadata, its row locked for this write."""
        row = (
            await conn.execute(
                sql(
                    "SELECT seq, user_id, metadata, active_leaf_id, branch_choices FROM threads"
                    " WHERE id = :id" + self.db.dialect.for_update
                ),
                {"id": thread_id},
            )
        ).first()
        if row is None:
            return None
        return LockedThread(
            int(row.seq), row.user_id, row.metadata, row.active_leaf_id, row.branch_choices
        )

    async def _new_thread(self, conn: Connection, thread_id: str, user: str | None) -> LockedThread:
        """Insert an empty thread; the thread as inserted. Two first writes of one thread
        may race (two workers, or Chainlit's tasks on PostgreSQL): the one that loses
        finds the row. A deleted thread is not made again (`ThreadDeleted`)."""
        if await conn.scalar(
            sql("SELECT 1 FROM deleted_threads WHERE id = :id"), {"id": thread_id}
        ):
            raise ThreadDeleted(f"thread {thread_id} was deleted")
        stamp = utc_now()
        seq = await conn.scalar(
            sql(
                "INSERT INTO threads (id, user_id, metadata, tags, created_at, updated_at)"
                " VALUES (:id, :user, '{}', '[]', :now, :now)"
                " ON CONFLICT (id) DO NOTHING RETURNING seq"
            ),
            {"id": thread_id, "user": user, "now": stamp},
        )
        if seq is not None:
            return LockedThread(int(seq), user, "{}")
        thread = await self.locked_thread(conn, thread_id)
        assert thread is not None  # it conflicted: it is there
        if thread.user_id is not None and user is not None and thread.user_id != user:
            raise ThreadAccessDenied(f"thread {thread_id} belongs to another user")
        return thread

    async def check_owner(self, conn: Connection, thread_id: str) -> None:
        acting = _acting_user_id()
        if acting is None:
            return  # REST routes check the author before calling; see chainlit.data.acl
        owner = await conn.scalar(
            sql("SELECT user_id FROM threads WHERE id = :id"), {"id": thread_id}
        )
        if owner is not None and owner != acting:
            raise ThreadAccessDenied(f"thread {thread_id} belongs to another user")

    async def update_thread(
        self,
        conn: Connection,
        thread_id: str,
        name: str | None = None,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        *,
        current: LockedThread | None = None,
        touched: str | None = None,
        tree: TreeChange | None = None,
    ) -> None:
        """`current`: the thread as this transaction found it already (not read again);
        `touched`: a new `updated_at`, and `tree`: a new active leaf and choices, set in
        the same UPDATE."""
        if current is None:
            current = await self.locked_thread(conn, thread_id)
        acting = user_id or _acting_user_id()
        if current is None and name is None and user_id is None and tags is None:
            # Only metadata, for a thread that is not there: Chainlit saving a session
            # whose thread was just deleted. Writing it would bring the thread back.
            return
        if current is None:
            current = await self._new_thread(conn, thread_id, acting)
        seq, owner = current.seq, current.user_id
        if owner is not None and acting is not None and owner != acting:
            raise ThreadAccessDenied(f"thread {thread_id} belongs to another user")
        changes: dict[str, Any] = {}
        if owner is None and acting is not None:
            changes["user_id"] = acting
        if name is not None:
            changes["name"] = name[:MAX_THREAD_NAME]
        if tags is not None:
            changes["tags"] = json.dumps(tags, ensure_ascii=False)
        if metadata is not None:
            merged = json.loads(current.metadata)
            merged = {k: v for k, v in merged.items() if k not in metadata}
            merged.update({k: v for k, v in scrub(metadata).items() if v is not None})
            changes["metadata"] = json.dumps(merged, ensure_ascii=False, default=str)
        if touched is not None:
            changes["updated_at"] = touched
        if tree is not None:
            changes["active_leaf_id"] = tree.leaf
            changes["branch_choices"] = json.dumps(tree.choices)
        if changes:
            assignments = ", ".join(f"{column} = :{column}" for column in changes)
            await conn.execute(
                sql(f"UPDATE threads SET {assignments} WHERE id = :id"),
                {**changes, "id": thread_id},
            )
        if name is not None:
            key = name_rowid(seq)
            await conn.execute(sql("DELETE FROM search WHERE rowid = :key"), {"key": key})
            await conn.execute(
                sql("INSERT INTO search (rowid, body) VALUES (:key, :body)"),
                {"key": key, "body": index_text(name)},
            )
