"""Chainlit's data layer on SQLite or PostgreSQL: users, threads, steps, feedback, elements, search.

Unlike Chainlit's own SQLAlchemy layer, a failed write raises (after being logged, since
Chainlit fires many writes as tasks nobody awaits), the thread list is paged in SQL with a
keyset cursor, and a thread's owner never changes once set.

`ChatDataLayer` is Chainlit's contract (`BaseDataLayer`) and the users Chainlit stores;
it hands every other call to the rows of its resource: `thread_rows` (a thread's row as
writes find it), `threads` (whole threads), `steps`, `elements` and `feedback`. Here are
the rules Chainlit's calls need: writes queued until the first message, failures logged
and raised, late writes to a deleted thread dropped.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from chainlit.data.base import BaseDataLayer
from chainlit.data.utils import queue_until_user_message
from chainlit.types import (
    Feedback,
    PaginatedResponse,
    Pagination,
    ThreadDict,
    ThreadFilter,
)
from chainlit.user import PersistedUser, User

from chatllm.clock import utc_now
from chatllm.errors import ChatLLMError, ThreadDeleted
from chatllm.store.db import Database, writes
from chatllm.store.elements import ElementRows
from chatllm.store.feedback import FeedbackRows
from chatllm.store.files import FileStore
from chatllm.store.steps import StepRows
from chatllm.store.thread_rows import (
    APP_METADATA,
    MAX_THREAD_NAME,
    SESSION_ONLY_PREFIX,
    ThreadAccessDenied,
    ThreadRows,
    chainlit_owned,
    scrub,
)
from chatllm.store.threads import MAX_PAGE, Threads
from chatllm.store.tree import Placement, TreeChange

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict

__all__ = [
    "APP_METADATA",
    "MAX_PAGE",
    "MAX_THREAD_NAME",
    "SESSION_ONLY_PREFIX",
    "ChatDataLayer",
    "ThreadAccessDenied",
    "UnknownUser",
    "chainlit_owned",
    "scrub",
    "skipped_if_deleted",
    "until_first_message",
]

log = logging.getLogger("chatllm.store")

P = ParamSpec("P")
R = TypeVar("R")


class UnknownUser(ChatLLMError, PermissionError):
    """A user the operator has not added (or has removed), in password mode."""


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


def _in_chat() -> bool:
    """Whether this call runs in a browser's chat (a websocket session's context)."""
    from chainlit.context import ChainlitContextException, context
    from chainlit.session import WebsocketSession

    try:
        return isinstance(context.session, WebsocketSession)
    except ChainlitContextException:
        return False


class ChatDataLayer(BaseDataLayer):
    def __init__(self, db: Database, files: FileStore) -> None:
        self.files = files
        #: Password mode: `create_user` (Chainlit's, after a login) updates a user the
        #: operator added and inserts none; a user removed meanwhile is not made again.
        self.known_users_only = False
        self.thread_rows = ThreadRows(db)
        self.elements = ElementRows(db, files, self.thread_rows)
        self.steps = StepRows(db, self.thread_rows, self.elements)
        self.threads = Threads(db, self.thread_rows, self.elements)
        self.feedback = FeedbackRows(db)
        self.db = db

    @property
    def db(self) -> Database:
        return self._db

    @db.setter
    def db(self, db: Database) -> None:
        # Every resource writes to the layer's database, one set in its place included.
        self._db = db
        self.thread_rows.db = db
        self.elements.db = db
        self.steps.db = db
        self.threads.db = db
        self.feedback.db = db

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
        return await self.feedback.upsert_feedback(feedback)

    @writes("the feedback could not be removed")
    async def delete_feedback(self, feedback_id: str) -> bool:
        return await self.feedback.delete_feedback(feedback_id)

    # ---- elements

    @until_first_message
    @writes("the attachment could not be saved")
    @skipped_if_deleted
    async def create_element(self, element: Element) -> None:
        await self.elements.create_element(element)

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        return await self.elements.get_element(thread_id, element_id)

    async def element_file(
        self, thread_id: str, element_id: str
    ) -> tuple[Path, str, str | None] | None:
        return await self.elements.element_file(thread_id, element_id)

    @until_first_message
    @writes("the attachment could not be removed")
    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        await self.elements.delete_element(element_id, thread_id)

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
        await self.steps.upsert_step(step_dict)

    @until_first_message
    @writes("the message could not be saved")
    @skipped_if_deleted
    async def update_step(self, step_dict: StepDict) -> None:
        await self.steps.upsert_step(step_dict)

    @writes("the message could not be saved")
    async def save_step(self, step_dict: StepDict) -> None:
        """Write a step now and wait for it: for callers that must know it is stored."""
        await self.steps.upsert_step(step_dict)

    @writes("the message could not be saved")
    async def save_message(
        self,
        step_dict: StepDict,
        *,
        thread_metadata: dict[str, Any] | None = None,
        elements: Sequence[Element] = (),
        place: Placement | None = None,
        tokens: bytes | None = None,
    ) -> None:
        """The app's write of a message (with the thread's metadata, the message's
        elements and its token records, in one transaction), placed in the conversation
        tree by `place`, else by its kind (chatllm.store.tree.TreeRows.place)."""
        await self.steps.save_message(step_dict, thread_metadata, elements, place, tokens)

    async def token_records(self, thread_id: str, step_id: str) -> bytes | None:
        """A reply's token records (chatllm.xray.records), if it has any in that thread:
        read only when its X-ray opens."""
        return await self.steps.token_records(thread_id, step_id)

    @until_first_message
    @writes("the message could not be removed")
    async def delete_step(self, step_id: str) -> None:
        await self.steps.delete_step(step_id)

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        return await self.steps.get_favorite_steps(user_id)

    # ---- threads

    async def owner_of(
        self, table: Literal["steps", "feedbacks", "elements"], row_id: str
    ) -> str | None:
        return await self.threads.owner_of(table, row_id)

    async def get_thread_author(self, thread_id: str) -> str:
        return await self.threads.get_thread_author(thread_id)

    @writes("the thread could not be removed")
    async def delete_thread(self, thread_id: str) -> None:
        await self.threads.delete_thread(thread_id)

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
        tree: TreeChange | None = None,
        tokens: Mapping[str, bytes] | None = None,
    ) -> None:
        await self.threads.add_thread(thread, steps, elements, tree, tokens)

    async def thread_token_records(self, thread_id: str) -> dict[str, bytes]:
        """Every token record of a thread, by its reply's id (an export, a fork)."""
        return await self.threads.token_records(thread_id)

    async def ensure_user(self, identifier: str) -> PersistedUser | None:
        """The stored user `identifier`, stored now if they are not yet."""
        return await self.get_user(identifier) or await self.create_user(
            User(identifier=identifier)
        )

    async def list_threads(
        self, pagination: Pagination, filters: ThreadFilter
    ) -> PaginatedResponse[ThreadDict]:
        return await self.threads.list_threads(pagination, filters)

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        """Chainlit's read of a thread (a resume, the thread route, a share): the path to
        its active leaf, not every branch mixed (chatllm.store.tree)."""
        return await self.threads.get_thread(thread_id)

    async def thread_path(self, thread_id: str, leaf: str | None) -> ThreadDict | None:
        """The thread as the path to `leaf` shows it (a tab's own branch); the active path
        if `leaf` is not a message of it."""
        return await self.threads.get_thread(thread_id, leaf=leaf)

    async def whole_thread(self, thread_id: str) -> ThreadDict | None:
        """Every step of every branch, each with its place in the tree (an export)."""
        return await self.threads.get_thread(thread_id, whole=True)

    @writes("the branch could not be deleted")
    async def delete_branch(self, thread_id: str, node_id: str) -> TreeChange:
        """Delete one version of a message with everything after it (the person asked
        and confirmed); the thread moves to the branch beside it. Every other way of
        deleting a message of the conversation is refused (`delete_step`)."""
        return await self.steps.delete_branch(thread_id, node_id)

    @writes("the branch could not be opened")
    async def choose_branch(self, thread_id: str, node_id: str) -> TreeChange:
        """Open the branch through `node_id` and save it as the thread's: the leaf found
        there (where the person was under it, else its newest) and the choice at every
        fork on the way. Two tabs switching at once take turns on the thread's row."""
        async with self.db.write() as conn:
            thread = await self.thread_rows.locked_thread(conn, thread_id)
            if thread is None:
                raise ThreadDeleted(f"thread {thread_id} is not there")
            await self.thread_rows.check_owner(conn, thread_id)
            return await self.steps.tree.choose_branch(conn, thread_id, thread, node_id)

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
            await self.thread_rows.update_thread(conn, thread_id, name, user_id, metadata, tags)

    @writes("the thread's settings could not be saved")
    async def save_thread_metadata(self, thread_id: str, metadata: dict[str, Any]) -> None:
        """The app's write of a thread's metadata, its own keys (`APP_METADATA`) included,
        merged as `update_thread` merges (None removes a key). Nothing is written for a
        thread that is not there: a new chat's first message makes it, and a deleted one
        stays deleted."""
        async with self.db.write() as conn:
            await self.thread_rows.update_thread(conn, thread_id, metadata=metadata)

    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        await self.db.close()
