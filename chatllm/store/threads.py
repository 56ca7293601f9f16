"""Whole threads: read with their steps and elements, listed and searched a page at a
time (paged in SQL, by a keyset cursor), imported in one transaction, and deleted with
their files, leaving a tombstone so that no late write brings one back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

from chainlit.types import (
    PageInfo,
    PaginatedResponse,
    Pagination,
    ThreadDict,
    ThreadFilter,
)
from sqlalchemy.engine import Row

from chatllm.clock import utc_now
from chatllm.conversation.marks import CHOSEN_REPLIES
from chatllm.conversation.tree import page
from chatllm.store.db import Database
from chatllm.store.dialect import sql
from chatllm.store.elements import ElementRows
from chatllm.store.search import (
    THREAD_SEQ_OF_ROW,
    index_text,
    message_rowid,
    name_rowid,
    query_terms,
    thread_rowids,
)
from chatllm.store.steps import step_dict, step_row
from chatllm.store.thread_rows import MAX_THREAD_NAME, ThreadRows, scrub
from chatllm.store.tree import (
    TREE,
    TREE_DEPTH,
    TREE_PARENT,
    TreeChange,
    choices_of,
    placed_flat,
)

if TYPE_CHECKING:
    from chainlit.element import ElementDict
    from chainlit.step import StepDict

#: The most threads one page of the list holds.
MAX_PAGE = 200


class Threads:
    """Threads whole: the `threads` table with the steps, feedback, elements and search
    rows that belong to each."""

    def __init__(self, db: Database, rows: ThreadRows, elements: ElementRows) -> None:
        self.db = db
        self.rows = rows
        self.elements = elements

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

    async def delete_thread(self, thread_id: str) -> None:
        async with self.db.write() as conn:
            seq = await conn.scalar(
                sql("SELECT seq FROM threads WHERE id = :id"), {"id": thread_id}
            )
            if seq is None:
                return
            await self.rows.check_owner(conn, thread_id)
            keys = await self.elements.object_keys(conn, "thread_id = :id", {"id": thread_id})
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
        await self.elements.delete_files(keys)

    async def token_records(self, thread_id: str) -> dict[str, bytes]:
        """Every token record of the thread, by its reply's id (an export, a fork)."""
        rows = await self.db.rows(
            "SELECT step_id, data FROM token_records WHERE thread_id = :thread",
            {"thread": thread_id},
        )
        return {row.step_id: bytes(row.data) for row in rows}

    async def add_thread(
        self,
        thread: ThreadDict,
        steps: Sequence[StepDict],
        elements: Sequence[ElementDict],
        tree: TreeChange | None = None,
        tokens: Mapping[str, bytes] | None = None,
    ) -> None:
        """A whole new thread (an import, a fork) in one transaction, its rows written in
        batches: all of it, or — a failure, a kill — none of it. Ids must be new.
        `tokens`: a reply's id → its token records (the X-ray's).

        Its tree: the steps' own tree fields with `tree`'s leaf and choices; steps without
        any (a flat export) become the tree a flat thread makes, its `chosen_replies`
        taken as the choices."""
        stamp = utc_now()
        metadata = scrub(thread.get("metadata"))
        chosen = metadata.pop(CHOSEN_REPLIES, None)
        if not any(step.get(TREE_DEPTH) is not None for step in steps):
            placed, tree = placed_flat(steps, chosen if isinstance(chosen, dict) else {})
            steps = [_placed(step, placed.get(step["id"])) for step in steps]
        tree = tree or TreeChange(None, {})
        async with self.db.write() as conn:
            seq = await conn.scalar(
                sql(
                    "INSERT INTO threads (id, user_id, name, metadata, tags, created_at,"
                    " updated_at, active_leaf_id, branch_choices) VALUES (:id, :user, :name,"
                    " :metadata, :tags, :now, :now, :leaf, :choices) RETURNING seq"
                ),
                {
                    "id": thread["id"],
                    "user": thread.get("userId"),
                    "name": (thread.get("name") or "")[:MAX_THREAD_NAME] or None,
                    "metadata": json.dumps(metadata, ensure_ascii=False),
                    "tags": json.dumps(thread.get("tags") or [], ensure_ascii=False),
                    "now": stamp,
                    "leaf": tree.leaf,
                    "choices": json.dumps(tree.choices),
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
                        " output, is_error, metadata, extra, created_at, start_time, end_time,"
                        " tree_parent_id, tree_depth)"
                        " VALUES (:id, :thread_id, :parent_id, :type, :name, :input, :output,"
                        " :is_error, :metadata, :extra, :created_at, :start, :end,"
                        " :tree_parent_id, :tree_depth)"
                    ),
                    [step_row(step, thread["id"], stamp) for step in steps],
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
            if tokens:
                await conn.execute(
                    sql(
                        "INSERT INTO token_records (step_id, thread_id, data)"
                        " VALUES (:step, :thread, :data)"
                    ),
                    [
                        {"step": step, "thread": thread["id"], "data": data}
                        for step, data in tokens.items()
                    ],
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

    async def get_thread(
        self, thread_id: str, *, leaf: str | None = None, whole: bool = False
    ) -> ThreadDict | None:
        """The thread as a page shows it: the path to `leaf` (else to the thread's active
        leaf) with what is attached to it and nested under it (chatllm.conversation.tree.
        page), and the elements of those steps; with `whole`, every step of every branch,
        in time order. Under the key `tree` (outside `metadata`, which Chainlit copies
        into the session): the leaf, the choices, the path, and the siblings of each node
        of the path that has some."""
        async with self.db.read() as conn:
            thread = (
                await conn.execute(
                    sql(
                        "SELECT t.id, t.name, t.user_id, u.identifier, t.metadata, t.tags,"
                        " t.created_at, t.active_leaf_id, t.branch_choices FROM threads t"
                        " LEFT JOIN users u ON u.id = t.user_id WHERE t.id = :id"
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
        choices = choices_of(thread.branch_choices)
        shown = page(steps, leaf or thread.active_leaf_id, choices)
        if whole:
            served = list(steps)
        else:
            by_id = {row.id: row for row in steps}
            served = [by_id[step_id] for step_id in shown.order]
        kept = {row.id for row in served}
        found = ThreadDict(
            id=thread.id,
            createdAt=thread.created_at,
            name=thread.name,
            userId=thread.user_id,
            userIdentifier=thread.identifier,
            tags=json.loads(thread.tags),
            metadata=json.loads(thread.metadata),
            steps=[step_dict(row) for row in served],
            elements=[
                self.elements.element_dict(row)
                for row in elements
                if row.step_id is None or row.step_id in kept
            ],
        )
        found[TREE] = {  # type: ignore[literal-required]
            "leaf": shown.leaf,
            "active": thread.active_leaf_id,
            "choices": choices,
            "path": shown.path,
            "siblings": shown.siblings,
        }
        return found


def _placed(step: StepDict, place: tuple[str | None, int] | None) -> StepDict:
    if place is None:
        return step
    return cast("StepDict", {**step, TREE_PARENT: place[0], TREE_DEPTH: place[1]})


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
