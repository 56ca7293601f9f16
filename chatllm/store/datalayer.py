"""Chainlit's data layer on SQLite or PostgreSQL: users, threads, steps, feedback, elements, search.

Unlike Chainlit's own SQLAlchemy layer, a failed write raises (after being logged, since
Chainlit fires many writes as tasks nobody awaits), the thread list is paged in SQL with a
keyset cursor, and a thread's owner never changes once set.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, ParamSpec, TypeVar

from chainlit.data.base import BaseDataLayer
from chainlit.data.utils import queue_until_user_message
from chainlit.types import (
    Feedback,
    FeedbackDict,
    PageInfo,
    PaginatedResponse,
    Pagination,
    ThreadDict,
    ThreadFilter,
)
from chainlit.user import PersistedUser, User
from sqlalchemy.engine import Row

from chatllm.clock import utc_now
from chatllm.errors import ChatLLMError, ThreadDeleted
from chatllm.store.db import Database, writes
from chatllm.store.dialect import Connection, sql
from chatllm.store.files import FileStore
from chatllm.store.search import (
    THREAD_SEQ_OF_ROW,
    index_text,
    message_rowid,
    name_rowid,
    query_terms,
    thread_rowids,
)

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict

log = logging.getLogger("chatllm.store")

P = ParamSpec("P")
R = TypeVar("R")

# Keys that may hold credentials; Chainlit copies the whole user session into thread
# metadata, so they are dropped before anything is written.
SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization|^env$)", re.I)
# StepDict keys kept in their own columns; every other key goes to `extra` as JSON.
STEP_COLUMNS = {
    "id", "threadId", "parentId", "type", "name", "input", "output", "isError",
    "metadata", "createdAt", "start", "end", "feedback",
}  # fmt: skip


#: The most threads one page of the list holds.
MAX_PAGE = 200
#: The longest thread name kept: a longer one is cut there.
MAX_THREAD_NAME = 255


class ThreadAccessDenied(ChatLLMError, PermissionError):
    """A write aimed at a thread that belongs to another user."""


class UnknownUser(ChatLLMError, PermissionError):
    """A user the operator has not added (or has removed), in password mode."""


class LockedThread(NamedTuple):
    """A thread's row as a write found it (and locked it, on PostgreSQL)."""

    seq: int
    user_id: str | None
    metadata: str  # JSON


def until_first_message(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R | None]]:
    """Chainlit's `queue_until_user_message`: in a chat session, writes before the first
    user message wait for it (an untouched new chat leaves no thread behind). Outside any
    Chainlit context (commands, benchmarks) the write runs at once."""
    queued = queue_until_user_message()(method)

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        from chainlit.context import ChainlitContextException, context

        try:
            context.session  # noqa: B018 - raises outside a Chainlit context
        except ChainlitContextException:
            return await method(*args, **kwargs)
        return await queued(*args, **kwargs)  # type: ignore[no-any-return]

    return wrapper


#: Thread metadata the app writes and keeps current itself (`save_thread_metadata`, and a
#: message's write): the chat's sliders and model, the chosen replies, the sharing flags.
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


def skipped_if_deleted(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R | None]]:
    """A write Chainlit makes (mostly in tasks nobody awaits) that finds its thread deleted
    is dropped, said in the log: the user deleted the thread, and a late write must not
    bring it back. The app's own awaited writes raise `ThreadDeleted` instead."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return await method(*args, **kwargs)
        except ThreadDeleted as exc:
            log.info("Not written (%s): %s", method.__name__, exc)
            return None

    return wrapper


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


def _in_chat() -> bool:
    """Whether this call runs in a browser's chat (a websocket session's context)."""
    from chainlit.context import ChainlitContextException, context
    from chainlit.session import WebsocketSession

    try:
        return isinstance(context.session, WebsocketSession)
    except ChainlitContextException:
        return False


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


#: Removed steps remembered per process (see `_removed`), the oldest forgotten first.
REMEMBERED_REMOVALS = 10_000


class ChatDataLayer(BaseDataLayer):
    def __init__(self, db: Database, files: FileStore) -> None:
        self.db = db
        self.files = files
        #: Password mode: `create_user` (Chainlit's, after a login) updates a user the
        #: operator added and inserts none; a user removed meanwhile is not made again.
        self.known_users_only = False
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

    # ---- users

    async def get_user(self, identifier: str) -> PersistedUser | None:
        row = await self.db.first(
            "SELECT id, identifier, metadata, created_at FROM users WHERE identifier = :identifier",
            {"identifier": identifier},
        )
        if row is None:
            return None
        metadata = json.loads(row.metadata)
        return PersistedUser(
            id=row.id,
            identifier=row.identifier,
            createdAt=row.created_at,
            metadata=metadata,
            display_name=metadata.get("display_name"),
        )

    @writes("the user could not be saved")
    async def create_user(self, user: User) -> PersistedUser | None:
        metadata = scrub(user.metadata)
        if user.display_name:
            metadata["display_name"] = user.display_name
        if self.known_users_only:
            updated = await self.db.execute(
                "UPDATE users SET metadata = :metadata WHERE identifier = :identifier",
                {
                    "identifier": user.identifier,
                    "metadata": json.dumps(metadata, ensure_ascii=False),
                },
            )
            if not updated:
                raise UnknownUser(f"there is no user {user.identifier!r}")
            return await self.get_user(user.identifier)
        await self.db.execute(
            "INSERT INTO users (id, identifier, metadata, created_at)"
            " VALUES (:id, :identifier, :metadata, :created_at)"
            " ON CONFLICT (identifier) DO UPDATE SET metadata = excluded.metadata",
            {
                "id": str(uuid.uuid4()),
                "identifier": user.identifier,
                "metadata": json.dumps(metadata, ensure_ascii=False),
                "created_at": utc_now(),
            },
        )
        return await self.get_user(user.identifier)

    # ---- feedback

    @writes("the feedback could not be saved")
    async def upsert_feedback(self, feedback: Feedback) -> str:
        feedback_id = feedback.id or str(uuid.uuid4())
        async with self.db.write() as conn:
            await conn.execute(  # the step's feedback changes one write at a time
                sql("SELECT 1 FROM steps WHERE id = :step" + self.db.dialect.for_update),
                {"step": feedback.forId},
            )
            # One feedback per step: a new thumb replaces the old one.
            await conn.execute(
                sql("DELETE FROM feedbacks WHERE step_id = :step AND id != :id"),
                {"step": feedback.forId, "id": feedback_id},
            )
            await conn.execute(
                sql(
                    "INSERT INTO feedbacks (id, step_id, value, comment)"
                    " VALUES (:id, :step, :value, :comment)"
                    " ON CONFLICT (id) DO UPDATE SET value = excluded.value,"
                    " comment = excluded.comment"
                ),
                {
                    "id": feedback_id,
                    "step": feedback.forId,
                    "value": int(feedback.value),
                    "comment": feedback.comment,
                },
            )
        return feedback_id

    @writes("the feedback could not be removed")
    async def delete_feedback(self, feedback_id: str) -> bool:
        return bool(
            await self.db.execute("DELETE FROM feedbacks WHERE id = :id", {"id": feedback_id})
        )

    # ---- elements

    @until_first_message
    @writes("the attachment could not be saved")
    @skipped_if_deleted
    async def create_element(self, element: Element) -> None:
        stored = await self._store_files([element])
        try:
            async with self.db.write() as conn:
                await self._insert_element(conn, element, stored.get(element.id))
        except BaseException:
            await self._delete_files(list(stored.values()))
            raise

    async def _store_files(self, elements: Sequence[Element]) -> dict[str, str]:
        """Each element's bytes in the file store (an element needs a thread, whose owner
        is checked when its row is written); their keys by element id."""
        stored: dict[str, str] = {}
        try:
            for element in elements:
                if not element.thread_id:
                    # An element belongs to a thread; without one no owner could be checked.
                    raise ThreadAccessDenied(f"element {element.id} names no thread")
                data = await _element_bytes(element)
                if data is not None:
                    stored[element.id] = await asyncio.to_thread(self.files.save, data)
        except BaseException:
            await self._delete_files(list(stored.values()))
            raise
        return stored

    async def _insert_element(
        self,
        conn: Connection,
        element: Element,
        object_key: str | None,
        checked_thread: str | None = None,
    ) -> None:
        """`checked_thread`: a thread this transaction has already checked and locked
        (`_ensure_thread`), not read again when the element is in it."""
        record = element.to_dict()
        assert element.thread_id
        if element.thread_id != checked_thread:
            await self._ensure_thread(conn, element.thread_id)
        written = await conn.execute(
            sql(
                "INSERT INTO elements (id, thread_id, step_id, type, name, mime, url,"
                " object_key, chainlit_key, display, size, language, page, props)"
                " VALUES (:id, :thread_id, :step_id, :type, :name, :mime, :url,"
                " :object_key, :chainlit_key, :display, :size, :language, :page, :props)"
                " ON CONFLICT (id) DO UPDATE SET props = excluded.props,"
                " object_key = COALESCE(excluded.object_key, elements.object_key)"
                # An element of another thread keeps its own: no update, no row.
                " WHERE elements.thread_id = excluded.thread_id"
                " RETURNING id"
            ),
            {
                "id": element.id,
                "thread_id": element.thread_id,
                "step_id": record.get("forId"),
                "type": record.get("type") or "file",
                "name": element.name,
                "mime": record.get("mime"),
                "url": None if object_key else element.url,
                "object_key": object_key,
                "chainlit_key": element.chainlit_key,
                "display": record.get("display"),
                "size": record.get("size"),
                "language": record.get("language"),
                "page": record.get("page"),
                "props": json.dumps(record.get("props") or {}, ensure_ascii=False),
            },
        )
        if written.first() is None:
            raise ThreadAccessDenied(f"element {element.id} belongs to another thread")

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        row = await self.db.first(
            "SELECT * FROM elements WHERE id = :id AND thread_id = :thread",
            {"id": element_id, "thread": thread_id},
        )
        return None if row is None else self._element_dict(row)

    async def element_file(
        self, thread_id: str, element_id: str
    ) -> tuple[Path, str, str | None] | None:
        """The stored file of an element (path, name, mime), if it has one."""
        row = await self.db.first(
            "SELECT object_key, name, mime FROM elements"
            " WHERE id = :id AND thread_id = :thread AND object_key IS NOT NULL",
            {"id": element_id, "thread": thread_id},
        )
        if row is None:
            return None
        return self.files.path(row.object_key), row.name, row.mime

    @until_first_message
    @writes("the attachment could not be removed")
    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        query = "DELETE FROM elements WHERE id = :id"
        if thread_id:
            query += " AND thread_id = :thread"
        row = await self.db.returning(
            query + " RETURNING object_key", {"id": element_id, "thread": thread_id}
        )
        if row is not None and row.object_key:
            await asyncio.to_thread(self.files.delete, row.object_key)

    # ---- steps

    @until_first_message
    @writes("the message could not be saved")
    @skipped_if_deleted
    async def create_step(self, step_dict: StepDict) -> None:
        if step_dict.get("type") == "user_message" and _in_chat():
            # Chainlit's own copy, written by a task nobody awaits: the app's message
            # handler stores every user message itself, before the model runs
            # (`save_message`), so this would write the same row a second time.
            return
        await self._upsert_step(step_dict)

    @until_first_message
    @writes("the message could not be saved")
    @skipped_if_deleted
    async def update_step(self, step_dict: StepDict) -> None:
        await self._upsert_step(step_dict)

    @writes("the message could not be saved")
    async def save_step(self, step_dict: StepDict) -> None:
        """Write a step now and wait for it: for callers that must know it is stored."""
        await self._upsert_step(step_dict)

    @writes("the message could not be saved")
    async def save_message(
        self,
        step_dict: StepDict,
        *,
        thread_metadata: dict[str, Any] | None = None,
        elements: Sequence[Element] = (),
    ) -> None:
        """A message, the thread's metadata (merged as `update_thread` does) and the
        message's elements, in one transaction the caller waits for: all of it or none,
        for one turn of the write lock (SQLite) or one commit (PostgreSQL)."""
        thread_id = step_dict.get("threadId")
        if not thread_id:
            raise ValueError(f"step {step_dict.get('id')} has no thread")
        stored = await self._store_files(elements)
        try:
            async with self._step_lock(step_dict["id"]):
                if step_dict["id"] in self._removed:
                    await self._delete_files(list(stored.values()))  # no row will name them
                    return
                async with self.db.write() as conn:
                    await self._write_step(conn, step_dict, thread_id, metadata=thread_metadata)
                    for element in elements:
                        key = stored.get(element.id)
                        await self._insert_element(conn, element, key, checked_thread=thread_id)
        except BaseException:
            await self._delete_files(list(stored.values()))
            raise

    async def _upsert_step(self, step: StepDict) -> None:
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
        thread = await self._ensure_thread(conn, thread_id)
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
                _step_row(step, thread_id, utc_now()),
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
            await self._update_thread(
                conn, thread_id, metadata=metadata, current=thread, touched=touched
            )
        elif message:
            await conn.execute(
                sql("UPDATE threads SET updated_at = :now WHERE id = :id"),
                {"now": utc_now(), "id": thread_id},
            )

    @until_first_message
    @writes("the message could not be removed")
    async def delete_step(self, step_id: str) -> None:
        async with self._step_lock(step_id):
            keys = await self._delete_step(step_id)
            # Remembered once removed (or when it was not written yet), while no write of
            # it can start: never for a removal refused, which would drop the owner's
            # later writes of that step.
            self._removed[step_id] = None
            while len(self._removed) > REMEMBERED_REMOVALS:
                self._removed.popitem(last=False)
        await self._delete_files(keys)

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
            await self._check_owner(conn, row.thread_id)
            keys = await self._object_keys(conn, "step_id = :id", {"id": step_id})
            await conn.execute(
                sql("DELETE FROM search WHERE rowid = :key"),
                {"key": message_rowid(row.thread_seq, row.seq)},
            )
            await conn.execute(sql("DELETE FROM elements WHERE step_id = :id"), {"id": step_id})
            await conn.execute(sql("DELETE FROM steps WHERE id = :id"), {"id": step_id})
        return keys

    # ---- threads

    async def owner_of(
        self, table: Literal["steps", "feedbacks", "elements"], row_id: str
    ) -> str | None:
        """The identifier of the user whose thread holds this step, feedback or element;
        None if there is no such row. ("" for a thread without an owner.)"""
        query = {
            "steps": "SELECT t.user_id FROM steps s JOIN threads t ON t.id = s.thread_id"
            " WHERE s.id = :id",
            "feedbacks": "SELECT t.user_id FROM feedbacks f JOIN steps s ON s.id = f.step_id"
            " JOIN threads t ON t.id = s.thread_id WHERE f.id = :id",
            "elements": "SELECT t.user_id FROM elements e JOIN threads t ON t.id = e.thread_id"
            " WHERE e.id = :id",
        }[table]
        row = await self.db.first(
            f"SELECT r.user_id, u.identifier FROM ({query}) r"
            " LEFT JOIN users u ON u.id = r.user_id",
            {"id": row_id},
        )
        return None if row is None else str(row.identifier or "")

    async def get_thread_author(self, thread_id: str) -> str:
        identifier = await self.db.value(
            "SELECT u.identifier FROM threads t JOIN users u ON u.id = t.user_id WHERE t.id = :id",
            {"id": thread_id},
        )
        return str(identifier or "")

    @writes("the thread could not be removed")
    async def delete_thread(self, thread_id: str) -> None:
        async with self.db.write() as conn:
            seq = await conn.scalar(
                sql("SELECT seq FROM threads WHERE id = :id"), {"id": thread_id}
            )
            if seq is None:
                return
            await self._check_owner(conn, thread_id)
            keys = await self._object_keys(conn, "thread_id = :id", {"id": thread_id})
            first, last = thread_rowids(seq)
            await conn.execute(
                sql("DELETE FROM search WHERE rowid BETWEEN :first AND :last"),
                {"first": first, "last": last},
            )
            # Steps, their feedback and the thread's elements go by ON DELETE CASCADE.
            await conn.execute(sql("DELETE FROM threads WHERE id = :id"), {"id": thread_id})
            await conn.execute(
                sql(
                    "INSERT INTO deleted_threads (id, deleted_at) VALUES (:id, :now)"
                    " ON CONFLICT (id) DO NOTHING"
                ),
                {"id": thread_id, "now": utc_now()},
            )
        await self._delete_files(keys)

    async def user_threads(
        self, user_id: str, *, search: str | None = None, limit: int = 20
    ) -> list[ThreadDict]:
        """The user's most recently active threads (for callers outside Chainlit)."""
        page = await self.list_threads(
            Pagination(first=limit), ThreadFilter(userId=user_id, search=search)
        )
        return list(page.data)

    @writes("the thread could not be imported")
    async def add_thread(
        self,
        thread: ThreadDict,
        steps: Sequence[StepDict],
        elements: Sequence[ElementDict],
    ) -> None:
        """A whole new thread (an import) in one transaction, its rows written in batches:
        all of it, or — a failure, a kill — none of it. Ids must be new."""
        stamp = utc_now()
        async with self.db.write() as conn:
            seq = await conn.scalar(
                sql(
                    "INSERT INTO threads (id, user_id, name, metadata, tags, created_at,"
                    " updated_at) VALUES (:id, :user, :name, :metadata, :tags, :now, :now)"
                    " RETURNING seq"
                ),
                {
                    "id": thread["id"],
                    "user": thread.get("userId"),
                    "name": (thread.get("name") or "")[:MAX_THREAD_NAME] or None,
                    "metadata": json.dumps(scrub(thread.get("metadata")), ensure_ascii=False),
                    "tags": json.dumps(thread.get("tags") or [], ensure_ascii=False),
                    "now": stamp,
                },
            )
            if thread.get("name"):
                await conn.execute(
                    sql("INSERT INTO search (rowid, body) VALUES (:key, :body)"),
                    {"key": name_rowid(seq), "body": index_text(str(thread["name"]))},
                )
            if steps:
                await conn.execute(
                    sql(
                        "INSERT INTO steps (id, thread_id, parent_id, type, name, input,"
                        " output, is_error, metadata, extra, created_at, start_time, end_time)"
                        " VALUES (:id, :thread_id, :parent_id, :type, :name, :input, :output,"
                        " :is_error, :metadata, :extra, :created_at, :start, :end)"
                    ),
                    [_step_row(step, thread["id"], stamp) for step in steps],
                )
                written = await conn.execute(
                    sql(
                        "SELECT seq, output FROM steps WHERE thread_id = :id"
                        " AND type LIKE '%message' AND output != ''"
                    ),
                    {"id": thread["id"]},
                )
                rows = [
                    {"key": message_rowid(seq, row.seq), "body": index_text(row.output)}
                    for row in written
                ]
                if rows:
                    await conn.execute(
                        sql("INSERT INTO search (rowid, body) VALUES (:key, :body)"), rows
                    )
            if elements:
                await conn.execute(
                    sql(
                        "INSERT INTO elements (id, thread_id, step_id, type, name, mime,"
                        " display, props) VALUES (:id, :thread_id, :step_id, :type, :name,"
                        " :mime, :display, :props)"
                    ),
                    [
                        {
                            "id": element["id"],
                            "thread_id": thread["id"],
                            "step_id": element.get("forId"),
                            "type": element.get("type") or "custom",
                            "name": element.get("name") or "",
                            "mime": element.get("mime"),
                            "display": element.get("display") or "inline",
                            "props": json.dumps(element.get("props") or {}, ensure_ascii=False),
                        }
                        for element in elements
                    ],
                )

    async def ensure_user(self, identifier: str) -> PersistedUser | None:
        """The stored user `identifier`, stored now if they are not yet."""
        return await self.get_user(identifier) or await self.create_user(
            User(identifier=identifier)
        )

    async def list_threads(
        self, pagination: Pagination, filters: ThreadFilter
    ) -> PaginatedResponse[ThreadDict]:
        """One page of a user's threads, most recent activity first.

        The cursor is the last row's (updated_at, id): the next page starts right after it
        through the index, however deep the page.
        """
        if not filters.userId:
            return PaginatedResponse(PageInfo(False, None, None), [])  # never everyone's
        conditions = ["t.user_id = :user"]
        # The sidebar asks for 20; a client asking for more than a page's worth (or for a
        # number SQLite cannot hold) gets the most a page has.
        first = min(max(pagination.first, 1), MAX_PAGE)
        params: dict[str, Any] = {"user": filters.userId, "limit": first + 1}
        if pagination.cursor:
            try:
                params["after_time"], params["after_id"] = pagination.cursor.split("|", 1)
            except ValueError:
                return PaginatedResponse(PageInfo(False, None, None), [])
            conditions.append("(t.updated_at, t.id) < (:after_time, :after_id)")
        if filters.feedback is not None:
            conditions.append(
                "EXISTS (SELECT 1 FROM steps s JOIN feedbacks f ON f.step_id = s.id"
                " WHERE s.thread_id = t.id AND f.value = :feedback)"
            )
            params["feedback"] = filters.feedback
        matches: list[str] = []  # a condition on `search` per term
        if filters.search and filters.search.strip():  # blank means no search
            terms = query_terms(filters.search)
            if not terms:
                return PaginatedResponse(PageInfo(False, None, None), [])
            for n, term in enumerate(terms):
                match, params[f"q{n}"] = self.db.dialect.match(term, f"q{n}")
                matches.append(match)
        if matches and self.db.dialect.search_walk:
            rows = await self._search_walking(conditions, matches, params)
        else:
            rows = await self.db.rows(_thread_page(conditions, matches), params)
        has_next = len(rows) > first
        rows = rows[:first]
        threads = [
            ThreadDict(
                id=row.id,
                createdAt=row.updated_at,  # the sidebar groups threads by last activity
                name=row.name,
                userId=row.user_id,
                userIdentifier=row.identifier,
                tags=json.loads(row.tags),
                metadata=json.loads(row.metadata),
                steps=[],
                elements=[],
            )
            for row in rows
        ]
        last = rows[-1] if rows else None
        return PaginatedResponse(
            pageInfo=PageInfo(
                hasNextPage=has_next,
                startCursor=f"{rows[0].updated_at}|{rows[0].id}" if rows else None,
                endCursor=f"{last.updated_at}|{last.id}" if last else None,
            ),
            data=threads,
        )

    async def _search_walking(
        self, conditions: list[str], matches: list[str], params: dict[str, Any]
    ) -> list[Row[Any]]:
        """A page of search results found by testing the user's newest threads one by one
        (up to the dialect's `search_walk` of them), then, if that did not fill the page,
        by reading the matching rows of the older threads."""
        window = self.db.dialect.search_walk
        where = " AND ".join(conditions)
        tests = "".join(
            " " + self.db.dialect.thread_test(match, f"m{n}") for n, match in enumerate(matches)
        )
        newest = (
            f"SELECT * FROM threads t WHERE {where}"
            " ORDER BY t.updated_at DESC, t.id DESC LIMIT :window"
        )
        walked = (
            f"SELECT {_LISTED} FROM ({newest}) t{tests} LEFT JOIN users u ON u.id = t.user_id"
            " ORDER BY t.updated_at DESC, t.id DESC LIMIT :limit"
        )
        last_walked = (
            f"SELECT t.updated_at, t.id FROM threads t WHERE {where}"
            " ORDER BY t.updated_at DESC, t.id DESC LIMIT 1 OFFSET :skip"
        )
        async with self.db.read() as conn:
            await self.db.dialect.walking(conn, True)
            rows = list((await conn.execute(sql(walked), {**params, "window": window})).all())
            if len(rows) >= params["limit"]:
                return rows
            edge = (
                await conn.execute(sql(last_walked), {**params, "skip": (window or 1) - 1})
            ).first()
            if edge is None:  # every thread was tested
                return rows
            await self.db.dialect.walking(conn, False)
            older = [*conditions, "(t.updated_at, t.id) < (:edge_time, :edge_id)"]
            rest = await conn.execute(
                sql(_thread_page(older, matches)),
                {
                    **params,
                    "edge_time": edge.updated_at,
                    "edge_id": edge.id,
                    "limit": params["limit"] - len(rows),
                },
            )
            return rows + list(rest.all())

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        async with self.db.read() as conn:
            thread = (
                await conn.execute(
                    sql(
                        "SELECT t.id, t.name, t.user_id, u.identifier, t.metadata, t.tags,"
                        " t.created_at FROM threads t LEFT JOIN users u ON u.id = t.user_id"
                        " WHERE t.id = :id"
                    ),
                    {"id": thread_id},
                )
            ).first()
            if thread is None:
                return None
            steps = (
                await conn.execute(
                    sql(
                        "SELECT s.*, f.id AS feedback_id, f.value AS feedback_value,"
                        " f.comment AS feedback_comment FROM steps s"
                        " LEFT JOIN feedbacks f ON f.step_id = s.id"
                        " WHERE s.thread_id = :id ORDER BY s.created_at, s.seq"
                    ),
                    {"id": thread_id},
                )
            ).all()
            elements = (
                await conn.execute(
                    sql("SELECT * FROM elements WHERE thread_id = :id"), {"id": thread_id}
                )
            ).all()
        return ThreadDict(
            id=thread.id,
            createdAt=thread.created_at,
            name=thread.name,
            userId=thread.user_id,
            userIdentifier=thread.identifier,
            tags=json.loads(thread.tags),
            metadata=json.loads(thread.metadata),
            steps=[_step_dict(row) for row in steps],
            elements=[self._element_dict(row) for row in elements],
        )

    @writes("the thread's settings could not be saved")
    @skipped_if_deleted
    async def update_thread(
        self,
        thread_id: str,
        name: str | None = None,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        tags: list[str] | None = None,
    ) -> None:
        """Chainlit's write of a thread: its name, owner, tags, and its own metadata
        (`chainlit_owned`: the app's keys are the app's to write)."""
        if metadata is not None:
            metadata = chainlit_owned(metadata)
        async with self.db.write() as conn:
            await self._update_thread(conn, thread_id, name, user_id, metadata, tags)

    @writes("the thread's settings could not be saved")
    async def save_thread_metadata(self, thread_id: str, metadata: dict[str, Any]) -> None:
        """The app's write of a thread's metadata, its own keys (`APP_METADATA`) included,
        merged as `update_thread` merges (None removes a key). Nothing is written for a
        thread that is not there: a new chat's first message makes it, and a deleted one
        stays deleted."""
        async with self.db.write() as conn:
            await self._update_thread(conn, thread_id, metadata=metadata)

    async def _update_thread(
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
    ) -> None:
        """`current`: the thread as this transaction found it already (not read again);
        `touched`: a new `updated_at`, set in the same UPDATE."""
        if current is None:
            current = await self._locked_thread(conn, thread_id)
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

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        rows = await self.db.rows(
            "SELECT s.*, NULL AS feedback_id FROM steps s"
            " JOIN threads t ON t.id = s.thread_id WHERE t.user_id = :user"
            f" AND {self.db.dialect.json_flag('s.metadata', 'favorite')}"
            " ORDER BY s.created_at DESC",
            {"user": user_id},
        )
        return [_step_dict(row) for row in rows]

    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        await self.db.close()

    # ---- helpers

    async def _ensure_thread(self, conn: Connection, thread_id: str) -> LockedThread:
        """Create the thread if it is new (owned by the acting user); refuse another's.
        Returns the thread as found. Its row stays locked until the write ends
        (PostgreSQL), so writes to one thread take turns."""
        thread = await self._locked_thread(conn, thread_id)
        acting = _acting_user_id()
        if thread is None:
            return await self._new_thread(conn, thread_id, acting)
        if thread.user_id is not None and acting is not None and thread.user_id != acting:
            raise ThreadAccessDenied(f"thread {thread_id} belongs to another user")
        return thread

    async def _locked_thread(self, conn: Connection, thread_id: str) -> LockedThread | None:
        """The thread's seq, owner and metadata, its row locked for this write."""
        row = (
            await conn.execute(
                sql(
                    "SELECT seq, user_id, metadata FROM threads WHERE id = :id"
                    + self.db.dialect.for_update
                ),
                {"id": thread_id},
            )
        ).first()
        return None if row is None else LockedThread(int(row.seq), row.user_id, row.metadata)

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
        thread = await self._locked_thread(conn, thread_id)
        assert thread is not None  # it conflicted: it is there
        if thread.user_id is not None and user is not None and thread.user_id != user:
            raise ThreadAccessDenied(f"thread {thread_id} belongs to another user")
        return thread

    async def _check_owner(self, conn: Connection, thread_id: str) -> None:
        acting = _acting_user_id()
        if acting is None:
            return  # REST routes check the author before calling; see chainlit.data.acl
        owner = await conn.scalar(
            sql("SELECT user_id FROM threads WHERE id = :id"), {"id": thread_id}
        )
        if owner is not None and owner != acting:
            raise ThreadAccessDenied(f"thread {thread_id} belongs to another user")

    async def _object_keys(self, conn: Connection, where: str, params: dict[str, Any]) -> list[str]:
        rows = await conn.execute(
            sql(f"SELECT object_key FROM elements WHERE {where} AND object_key IS NOT NULL"),
            params,
        )
        return [row.object_key for row in rows]

    async def _delete_files(self, keys: list[str]) -> None:
        for key in keys:
            await asyncio.to_thread(self.files.delete, key)

    def _element_dict(self, row: Row[Any]) -> ElementDict:
        from chainlit.element import ElementDict

        url = row.url
        if row.object_key:
            url = self.files.url(row.thread_id, row.id)
        return ElementDict(
            id=row.id,
            threadId=row.thread_id,
            type=row.type,
            name=row.name,
            mime=row.mime,
            url=url,
            objectKey=None,
            chainlitKey=row.chainlit_key,
            display=row.display,
            size=row.size,
            language=row.language,
            page=row.page,
            props=json.loads(row.props),
            forId=row.step_id,
        )


def _step_row(step: StepDict, thread_id: str, now: str) -> dict[str, Any]:
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


def _step_dict(row: Row[Any]) -> StepDict:
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


async def _element_bytes(element: Element) -> bytes | None:
    if element.type == "custom":
        return None  # its data is its props, stored in the row
    content = getattr(element, "content", None)
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, bytes):
        return content
    path = getattr(element, "path", None)
    if path:
        return await asyncio.to_thread(Path(path).read_bytes)
    return None


#: The columns of a listed thread (threads `t`, users `u`).
_LISTED = "t.id, t.name, t.user_id, u.identifier, t.metadata, t.tags, t.updated_at"


def _thread_page(conditions: list[str], matches: list[str]) -> str:
    """A page of threads `t` where every condition holds and, for each condition on
    `search` in `matches`, one of the thread's rows meets it; newest activity first."""
    where = [*conditions] + [
        f"t.seq IN (SELECT {THREAD_SEQ_OF_ROW} FROM search WHERE {match})" for match in matches
    ]
    return (
        f"SELECT {_LISTED} FROM threads t LEFT JOIN users u ON u.id = t.user_id"
        f" WHERE {' AND '.join(where)} ORDER BY t.updated_at DESC, t.id DESC LIMIT :limit"
    )
