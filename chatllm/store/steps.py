"""Steps (messages, and Chainlit's other steps): written with their search rows, each in
its thread (whose owner is checked), and removed for good: a removed step is never
written again by this process.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from chainlit.types import FeedbackDict
from sqlalchemy.engine import Row

from chatllm.clock import utc_now
from chatllm.store.db import Database
from chatllm.store.dialect import Connection, sql
from chatllm.store.elements import ElementRows
from chatllm.store.search import index_text, message_rowid
from chatllm.store.thread_rows import ThreadAccessDenied, ThreadRows

if TYPE_CHECKING:
    from chainlit.element import Element
    from chainlit.step import StepDict

# StepDict keys kept in their own columns; every other key goes to `extra` as JSON.
STEP_COLUMNS = {
    "id", "threadId", "parentId", "type", "name", "input", "output", "isError",
    "metadata", "createdAt", "start", "end", "feedback",
}  # fmt: skip


#: Removed steps remembered per process (see `_removed`), the oldest forgotten first.
REMEMBERED_REMOVALS = 10_000


class StepRows:
    """The `steps` table and the search rows of its messages."""

    def __init__(self, db: Database, threads: ThreadRows, elements: ElementRows) -> None:
        self.db = db
        self.threads = threads
        self.elements = elements
        #: Steps removed by this process: Chainlit writes a message in a task nobody awaits
        #: (`Message._create`), which may reach the database after the message was removed
        #: (a command's own message is, at once) and would bring it back. A removed id is
        #: never written again, and a removal waits for a write of that step in flight.
        self._removed: OrderedDict[str, None] = OrderedDict()
        self._step_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def _step_lock(self, step_id: str) -> asyncio.Lock:
        """The lock this process's writes of one step take turns on (gone once unused)."""
        lock = self._step_locks.get(step_id)
        if lock is None:
            lock = self._step_locks[step_id] = asyncio.Lock()
        return lock

    async def save_message(
        self, step_dict: StepDict, metadata: dict[str, Any] | None, elements: Sequence[Element]
    ) -> None:
        """A message, the thread's metadata (merged as `update_thread` does) and the
        message's elements, in one transaction the caller waits for: all of it or none,
        for one turn of the write lock (SQLite) or one commit (PostgreSQL)."""
        thread_id = step_dict.get("threadId")
        if not thread_id:
            raise ValueError(f"step {step_dict.get('id')} has no thread")
        stored = await self.elements.store_files(elements)
        try:
            async with self._step_lock(step_dict["id"]):
                if step_dict["id"] in self._removed:
                    await self.elements.delete_files(list(stored.values()))  # no row will name them
                    return
                async with self.db.write() as conn:
                    await self._write_step(conn, step_dict, thread_id, metadata=metadata)
                    for element in elements:
                        key = stored.get(element.id)
                        await self.elements.insert_element(
                            conn, element, key, checked_thread=thread_id
                        )
        except BaseException:
            await self.elements.delete_files(list(stored.values()))
            raise

    async def upsert_step(self, step: StepDict) -> None:
        thread_id = step.get("threadId")
        if not thread_id:
            raise ValueError(f"step {step.get('id')} has no thread")
        async with self._step_lock(step["id"]):
            if step["id"] not in self._removed:
                async with self.db.write() as conn:
                    await self._write_step(conn, step, thread_id)

    async def _write_step(
        self,
        conn: Connection,
        step: StepDict,
        thread_id: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Write a step (and, given `metadata`, the thread's, merged as `update_thread`
        does) and its search row, the thread checked and locked first. A message is the
        thread's activity: its `updated_at` changes in the same UPDATE as the metadata."""
        thread = await self.threads.ensure_thread(conn, thread_id)
        row = (
            await conn.execute(
                sql(
                    "INSERT INTO steps (id, thread_id, parent_id, type, name, input, output,"
                    " is_error, metadata, extra, created_at, start_time, end_time)"
                    " VALUES (:id, :thread_id, :parent_id, :type, :name, :input, :output,"
                    " :is_error, :metadata, :extra, :created_at, :start, :end)"
                    " ON CONFLICT (id) DO UPDATE SET"
                    " parent_id = COALESCE(excluded.parent_id, steps.parent_id),"
                    " type = CASE WHEN excluded.type = 'run' THEN steps.type"
                    "   ELSE excluded.type END,"
                    " name = COALESCE(excluded.name, steps.name),"
                    " input = COALESCE(NULLIF(excluded.input, ''), steps.input),"
                    " output = COALESCE(NULLIF(excluded.output, ''), steps.output),"
                    " is_error = COALESCE(excluded.is_error, steps.is_error),"
                    " metadata = CASE WHEN excluded.metadata = '{}' THEN steps.metadata"
                    "   ELSE excluded.metadata END,"
                    " extra = excluded.extra,"
                    " start_time = COALESCE(steps.start_time, excluded.start_time),"
                    " end_time = COALESCE(excluded.end_time, steps.end_time)"
                    " WHERE steps.thread_id = excluded.thread_id"
                    " RETURNING seq, type, output"
                ),
                step_row(step, thread_id, utc_now()),
            )
        ).first()
        if row is None:
            raise ThreadAccessDenied(f"step {step['id']} belongs to another thread")
        key = message_rowid(thread.seq, row.seq)
        message = row.type.endswith("message")  # activity; Chainlit's `run` steps are not
        if row.type != "run":  # a `run` step was never a message (its type is kept), and
            # has no search row: one statement fewer for each of Chainlit's two per turn
            await conn.execute(sql("DELETE FROM search WHERE rowid = :key"), {"key": key})
        if message and row.output:
            await conn.execute(
                sql("INSERT INTO search (rowid, body) VALUES (:key, :body)"),
                {"key": key, "body": index_text(row.output)},
            )
        if metadata is not None:
            touched = utc_now() if message else None
            await self.threads.update_thread(
                conn, thread_id, metadata=metadata, current=thread, touched=touched
            )
        elif message:
            await conn.execute(
                sql("UPDATE threads SET updated_at = :now WHERE id = :id"),
                {"now": utc_now(), "id": thread_id},
            )

    async def delete_step(self, step_id: str) -> None:
        async with self._step_lock(step_id):
            keys = await self._delete_step(step_id)
            # Remembered once removed (or when it was not written yet), while no write of
            # it can start: never for a removal refused, which would drop the owner's
            # later writes of that step.
            self._removed[step_id] = None
            while len(self._removed) > REMEMBERED_REMOVALS:
                self._removed.popitem(last=False)
        await self.elements.delete_files(keys)

    async def _delete_step(self, step_id: str) -> list[str]:
        """Remove the step, its search row and elements; the element files to remove."""
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    sql(
                        "SELECT s.seq, s.thread_id, t.seq AS thread_seq FROM steps s"
                        " JOIN threads t ON t.id = s.thread_id WHERE s.id = :id"
                    ),
                    {"id": step_id},
                )
            ).first()
            if row is None:
                return []
            await self.threads.check_owner(conn, row.thread_id)
            keys = await self.elements.object_keys(conn, "step_id = :id", {"id": step_id})
            await conn.execute(
                sql("DELETE FROM search WHERE rowid = :key"),
                {"key": message_rowid(row.thread_seq, row.seq)},
            )
            await conn.execute(sql("DELETE FROM elements WHERE step_id = :id"), {"id": step_id})
            await conn.execute(sql("DELETE FROM steps WHERE id = :id"), {"id": step_id})
        return keys

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        rows = await self.db.rows(
            "SELECT s.*, NULL AS feedback_id FROM steps s"
            " JOIN threads t ON t.id = s.thread_id WHERE t.user_id = :user"
            f" AND {self.db.dialect.json_flag('s.metadata', 'favorite')}"
            " ORDER BY s.created_at DESC",
            {"user": user_id},
        )
        return [step_dict(row) for row in rows]


def step_row(step: StepDict, thread_id: str, now: str) -> dict[str, Any]:
    """A step's values for the `steps` table."""
    extra = {k: v for k, v in step.items() if k not in STEP_COLUMNS and v is not None}
    created = step.get("createdAt") or now
    return {
        "id": step["id"],
        "thread_id": thread_id,
        "parent_id": step.get("parentId"),
        "type": step.get("type") or "undefined",
        "name": step.get("name"),
        "input": _as_text(step.get("input")),
        "output": _as_text(step.get("output")),
        "is_error": step.get("isError"),
        "metadata": json.dumps(step.get("metadata") or {}, ensure_ascii=False),
        "extra": json.dumps(extra, ensure_ascii=False, default=str),
        "created_at": created,
        "start": step.get("start") or created,
        "end": step.get("end"),
    }


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def step_dict(row: Row[Any]) -> StepDict:
    step: dict[str, Any] = json.loads(row.extra)
    step.update(
        id=row.id,
        threadId=row.thread_id,
        parentId=row.parent_id,
        type=row.type,
        name=row.name,
        input=row.input or "",
        output=row.output or "",
        isError=bool(row.is_error) if row.is_error is not None else None,
        metadata=json.loads(row.metadata),
        createdAt=row.created_at,
        start=row.start_time,
        end=row.end_time,
    )
    if row.feedback_id is not None:
        step["feedback"] = FeedbackDict(
            forId=row.id, id=row.feedback_id, value=row.feedback_value, comment=row.feedback_comment
        )
    return step  # type: ignore[return-value]
