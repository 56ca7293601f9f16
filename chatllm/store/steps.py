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
from chatllm.errors import ThreadDeleted
from chatllm.store.db import Database
from chatllm.store.dialect import Connection, sql
from chatllm.store.elements import ElementRows
from chatllm.store.search import index_text, message_rowid
from chatllm.store.thread_rows import ThreadAccessDenied, ThreadRows
from chatllm.store.tree import (
    TREE_DEPTH,
    TREE_PARENT,
    Placement,
    StepKept,
    TreeChange,
    TreeRows,
)

if TYPE_CHECKING:
    from chainlit.element import Element
    from chainlit.step import StepDict

# StepDict keys kept in their own columns; every other key goes to `extra` as JSON.
STEP_COLUMNS = {
    "id", "threadId", "parentId", "type", "name", "input", "output", "isError",
    "metadata", "createdAt", "start", "end", "feedback", TREE_PARENT, TREE_DEPTH,
}  # fmt: skip


#: Removed steps remembered per process (see `_removed`), the oldest forgotten first.
REMEMBERED_REMOVALS = 10_000


class StepRows:
    """The `steps` table and the search rows of its messages."""

    def __init__(self, db: Database, threads: ThreadRows, elements: ElementRows) -> None:
        self.db = db
        self.threads = threads
        self.elements = elements
        self.tree = TreeRows()
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
        self,
        step_dict: StepDict,
        metadata: dict[str, Any] | None,
        elements: Sequence[Element],
        place: Placement | None = None,
        tokens: bytes | None = None,
    ) -> None:
        """A message, the thread's metadata (merged as `update_thread` does), the
        message's elements and its token records (the X-ray's: chatllm.xray.records), in
        one transaction the caller waits for: all of it or none, for one turn of the
        write lock (SQLite) or one commit (PostgreSQL)."""
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
                    await self._write_step(
                        conn, step_dict, thread_id, metadata=metadata, place=place
                    )
                    for element in elements:
                        key = stored.get(element.id)
                        await self.elements.insert_element(
                            conn, element, key, checked_thread=thread_id
                        )
                    if tokens:
                        await conn.execute(
                            sql(
                                "INSERT INTO token_records (step_id, thread_id, data)"
                                " VALUES (:step, :thread, :data) ON CONFLICT (step_id)"
                                " DO UPDATE SET data = excluded.data"
                            ),
                            {"step": step_dict["id"], "thread": thread_id, "data": tokens},
                        )
        except BaseException:
            await self.elements.delete_files(list(stored.values()))
            raise

    async def token_records(self, thread_id: str, step_id: str) -> bytes | None:
        """A message's token records, if it has any in that thread."""
        data = await self.db.value(
            "SELECT data FROM token_records WHERE step_id = :step AND thread_id = :thread",
            {"step": step_id, "thread": thread_id},
        )
        return bytes(data) if data is not None else None

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
        place: Placement | None = None,
    ) -> None:
        """Write a step (and, given `metadata`, the thread's, merged as `update_thread`
        does) and its search row, the thread checked and locked first, the step placed in
        the conversation tree when first written (`place`, else by its kind:
        chatllm.store.tree). A message is the thread's activity: its `updated_at` changes
        in the same UPDATE as the metadata and the tree's active leaf."""
        thread = await self.threads.ensure_thread(conn, thread_id)
        placed = await self.tree.place(conn, thread_id, thread, step, place)
        values = step_row(step, thread_id, utc_now())
        # The place decided here, never one a caller's dict carries.
        values["tree_parent_id"] = placed.tree_parent_id if placed else None
        values["tree_depth"] = placed.tree_depth if placed else None
        change = placed.change if placed else None
        row = (
            await conn.execute(
                sql(
                    "INSERT INTO steps (id, thread_id, parent_id, type, name, input, output,"
                    " is_error, metadata, extra, created_at, start_time, end_time,"
                    " tree_parent_id, tree_depth)"
                    " VALUES (:id, :thread_id, :parent_id, :type, :name, :input, :output,"
                    " :is_error, :metadata, :extra, :created_at, :start, :end,"
                    " :tree_parent_id, :tree_depth)"
                    " ON CONFLICT (id) DO UPDATE SET"
                    # Placed once: only an attached step may still become a node.
                    f" tree_parent_id = CASE WHEN {_PLACE_ANEW}"
                    "   THEN excluded.tree_parent_id ELSE steps.tree_parent_id END,"
                    f" tree_depth = CASE WHEN {_PLACE_ANEW}"
                    "   THEN excluded.tree_depth ELSE steps.tree_depth END,"
                    " parent_id = COALESCE(excluded.parent_id, steps.parent_id),"
                    " type = CASE WHEN excluded.type = 'run' THEN steps.type"
                    "   ELSE excluded.type END,"
                    " name = COALESCE(excluded.name, steps.name),"
                    " input = COALESCE(NULLIF(excluded.input, ''), steps.input),"
                    # A message of the conversation keeps its words: Chainlit's own
                    # edit would overwrite them (an edit is a new sibling instead).
                    " output = CASE WHEN steps.tree_depth >= 0 AND steps.output != ''"
                    "   THEN steps.output"
                    "   ELSE COALESCE(NULLIF(excluded.output, ''), steps.output) END,"
                    " is_error = COALESCE(excluded.is_error, steps.is_error),"
                    " metadata = CASE WHEN excluded.metadata = '{}' THEN steps.metadata"
                    "   ELSE excluded.metadata END,"
                    " extra = excluded.extra,"
                    " start_time = COALESCE(steps.start_time, excluded.start_time),"
                    " end_time = COALESCE(excluded.end_time, steps.end_time)"
                    " WHERE steps.thread_id = excluded.thread_id"
                    " RETURNING seq, type, output"
                ),
                values,
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
        if metadata is not None or change is not None:
            touched = utc_now() if message else None
            await self.threads.update_thread(
                conn, thread_id, metadata=metadata, current=thread, touched=touched, tree=change
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
            self._remember_removed([step_id])
        await self.elements.delete_files(keys)

    def _remember_removed(self, step_ids: Sequence[str]) -> None:
        """These steps are never written again by this process (the oldest forgotten
        past REMEMBERED_REMOVALS)."""
        for step_id in step_ids:
            self._removed[step_id] = None
        while len(self._removed) > REMEMBERED_REMOVALS:
            self._removed.popitem(last=False)

    async def _delete_step(self, step_id: str) -> list[str]:
        """Remove the step, its search row and elements; the element files to remove."""
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    sql(
                        "SELECT s.seq, s.thread_id, s.tree_depth, t.seq AS thread_seq"
                        " FROM steps s JOIN threads t ON t.id = s.thread_id WHERE s.id = :id"
                    ),
                    {"id": step_id},
                )
            ).first()
            if row is None:
                return []
            await self.threads.check_owner(conn, row.thread_id)
            if row.tree_depth is not None and row.tree_depth >= 0:
                # A message of the conversation goes only with its branch, when the user
                # asks and confirms; Chainlit's edit would delete every later message.
                raise StepKept(f"step {step_id} is a message of the conversation: kept")
            keys = await self.elements.object_keys(conn, "step_id = :id", {"id": step_id})
            await conn.execute(
                sql("DELETE FROM search WHERE rowid = :key"),
                {"key": message_rowid(row.thread_seq, row.seq)},
            )
            await conn.execute(sql("DELETE FROM elements WHERE step_id = :id"), {"id": step_id})
            await conn.execute(sql("DELETE FROM steps WHERE id = :id"), {"id": step_id})
        return keys

    async def delete_branch(self, thread_id: str, node_id: str) -> TreeChange:
        """Remove one branch of a thread's conversation (asked for and confirmed by its
        owner): its messages, what is attached and nested under them, their search rows,
        elements and files; the thread moves off it. Its steps are never written again."""
        async with self.db.write() as conn:
            thread = await self.threads.locked_thread(conn, thread_id)
            if thread is None:
                raise ThreadDeleted(f"thread {thread_id} is not there")
            await self.threads.check_owner(conn, thread_id)
            doomed = await self.tree.delete_branch(conn, thread_id, thread, node_id)
            marks = {f"s{n}": step for n, step in enumerate(doomed.steps)}
            among = ", ".join(f":{mark}" for mark in marks)
            keys = await self.elements.object_keys(conn, f"step_id IN ({among})", marks)
            search = [{"key": message_rowid(thread.seq, seq)} for seq in doomed.seqs]
            if search:
                await conn.execute(sql("DELETE FROM search WHERE rowid = :key"), search)
            await conn.execute(sql(f"DELETE FROM elements WHERE step_id IN ({among})"), marks)
            await conn.execute(sql(f"DELETE FROM steps WHERE id IN ({among})"), marks)
        self._remember_removed(doomed.steps)
        await self.elements.delete_files(keys)
        return doomed.change

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        rows = await self.db.rows(
            "SELECT s.*, NULL AS feedback_id FROM steps s"
            " JOIN threads t ON t.id = s.thread_id WHERE t.user_id = :user"
            f" AND {self.db.dialect.json_flag('s.metadata', 'favorite')}"
            " ORDER BY s.created_at DESC",
            {"user": user_id},
        )
        return [step_dict(row) for row in rows]


#: An upsert's condition for taking the new row's place: the stored row has none, or is
#: attached and the new one is a node.
_PLACE_ANEW = "(steps.tree_depth IS NULL OR (steps.tree_depth < 0 AND excluded.tree_depth >= 0))"


def step_row(step: StepDict, thread_id: str, now: str) -> dict[str, Any]:
    """A step's values for the `steps` table (its tree columns as the dict gives them:
    an import's; a live write's are decided by the store)."""
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
        "tree_parent_id": step.get(TREE_PARENT),
        "tree_depth": step.get(TREE_DEPTH),
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
    step[TREE_PARENT] = row.tree_parent_id
    step[TREE_DEPTH] = row.tree_depth
    if row.feedback_id is not None:
        step["feedback"] = FeedbackDict(
            forId=row.id, id=row.feedback_id, value=row.feedback_value, comment=row.feedback_comment
        )
    return step  # type: ignore[return-value]
