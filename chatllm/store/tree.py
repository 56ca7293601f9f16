"""The conversation tree in the store (issue 26): where each written step goes, the
thread's active leaf and the child chosen at each fork, a switch of branch, and the
migration that makes trees of the threads written before them.

Columns: `steps.tree_parent_id` and `steps.tree_depth` (a node's depth ≥ 0; an attached
step's `ATTACHED`, its parent the node it is shown after; None for a step that is neither,
such as Chainlit's run steps, placed by what they are nested under), and per thread
`active_leaf_id` and `branch_choices` (JSON: fork id, or `ROOT`, → the child chosen
there). `steps.parent_id` keeps Chainlit's meaning (the step a step is nested under).

A step's place is decided once, when it is first written, and never changed by a later
write of it (Chainlit rewrites its steps; a client may echo one back): only an attached
step may still become a node, when the app's own write comes after Chainlit's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from chatllm.conversation.flat import tree_of_flat
from chatllm.conversation.marks import CHOSEN_REPLIES, KIND, REPLY_TO, is_conversation_reply
from chatllm.conversation.tree import (
    ATTACHED,
    ROOT,
    Node,
    Tree,
    made_before,
    nodes_of,
    tree_of_rows,
)
from chatllm.errors import ChatLLMError
from chatllm.store.dialect import Connection, sql

if TYPE_CHECKING:
    from chainlit.step import StepDict

    from chatllm.store.thread_rows import LockedThread

#: A step dict's tree fields, as the store reads them out (and takes them in on import).
TREE_PARENT = "treeParentId"
TREE_DEPTH = "treeDepth"
#: A read thread's key for its tree (chatllm.store.threads.Threads.get_thread).
TREE = "tree"


@dataclass(frozen=True)
class ServedTree:
    """What a read thread says of its tree: the leaf of the path served, the thread's
    active leaf, the choices, the path, and the siblings of each node of the path that
    has some (oldest first)."""

    leaf: str | None
    active: str | None
    choices: dict[str, str]
    path: list[str]
    siblings: dict[str, list[str]]


def served_tree(thread: Mapping[str, Any]) -> ServedTree:
    """The tree of a thread the store read (empty for one made otherwise)."""
    tree = thread.get(TREE) or {}
    return ServedTree(
        leaf=tree.get("leaf"),
        active=tree.get("active"),
        choices=dict(tree.get("choices") or {}),
        path=list(tree.get("path") or []),
        siblings={k: list(v) for k, v in (tree.get("siblings") or {}).items()},
    )


class BranchGone(ChatLLMError):
    """A branch asked for that is not (or no longer) in the thread."""


class BranchKept(ChatLLMError):
    """A branch asked to be deleted that is the only version at its place."""


class StepKept(ChatLLMError):
    """A message of the conversation asked to be deleted by a way that would lose part of
    the tree (Chainlit's own edit, a client's delete): refused."""


class Activate(StrEnum):
    """Whether writing a node makes it the thread's active leaf."""

    ALWAYS = "always"  # the user's own act: a message sent, a reply regenerated
    IF_PARENT = "if_parent"  # a reply ending: only if the thread still stands on its message
    NEVER = "never"


@dataclass(frozen=True)
class Placement:
    """Where the app puts a step it writes: under the node `parent` (None: a root), as a
    node of the conversation, or attached after `parent`."""

    parent: str | None
    node: bool = True
    activate: Activate = Activate.ALWAYS

    @classmethod
    def attached(cls, anchor: str | None) -> Placement:
        return cls(anchor, node=False, activate=Activate.NEVER)


@dataclass(frozen=True)
class TreeChange:
    """A thread's new active leaf and choices."""

    leaf: str | None
    choices: dict[str, str]


@dataclass(frozen=True)
class Placed:
    """A step's tree columns, and the thread's change if writing it moves the leaf."""

    tree_parent_id: str | None
    tree_depth: int
    change: TreeChange | None = None


def choices_of(raw: str | None) -> dict[str, str]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


class TreeRows:
    """The tree columns of `steps` and `threads`, as writes and switches change them."""

    async def place(
        self,
        conn: Connection,
        thread_id: str,
        thread: LockedThread,
        step: StepDict,
        place: Placement | None,
    ) -> Placed | None:
        """Where `step` goes, if it is placed now: an explicit `place` from the app; else a
        conversation reply under the user message it answers (regenerated: made active;
        a reply: active if the thread still stands on its message); a user message under
        the thread's active leaf; another step on top attached after the active leaf (or
        after the last node of the path made before it: Chainlit writes what a chat
        shows before its first message only once that message is stored). Steps nested
        by Chainlit are not placed. None where nothing changes, a step already placed
        included."""
        step_type = step.get("type")
        on_top = not step.get("parentId")
        reply = is_conversation_reply(step)
        if place is None and not (step_type == "user_message" or reply or on_top):
            return None
        existing = (
            await conn.execute(
                sql("SELECT tree_depth FROM steps WHERE id = :id AND thread_id = :thread"),
                {"id": step["id"], "thread": thread_id},
            )
        ).first()
        if existing is not None and existing.tree_depth is not None:
            if existing.tree_depth >= 0:
                return None  # a node's place never changes
            if not (reply or (place is not None and place.node)):
                return None
        if place is None:
            if reply:
                # A reply that does not name its message (written by Chainlit alone, or
                # before replies did) answers the message the thread stands on.
                target = (step.get("metadata") or {}).get(REPLY_TO) or thread.active_leaf_id
                kind = (step.get("metadata") or {}).get(KIND, "reply")
                activate = Activate.ALWAYS if kind == "variant" else Activate.IF_PARENT
                parent = await self._node(conn, thread_id, target, user=True)
                if target is not None and parent is not None:
                    place = Placement(target, activate=activate)
            elif step_type == "user_message":
                place = Placement(thread.active_leaf_id)
        if place is None or not place.node:
            if not on_top and place is None:
                return None
            anchor = place.parent if place is not None else None
            if place is None:
                anchor = await self._anchor(conn, thread_id, thread, step)
            elif anchor is not None and await self._node(conn, thread_id, anchor) is None:
                anchor = thread.active_leaf_id
            if existing is not None and existing.tree_depth == ATTACHED:
                return None  # attached already
            return Placed(anchor, ATTACHED)
        return await self._node_placed(conn, thread_id, thread, step["id"], place)

    async def _node_placed(
        self,
        conn: Connection,
        thread_id: str,
        thread: LockedThread,
        step_id: str,
        place: Placement,
    ) -> Placed:
        parent = place.parent
        depth = None if parent is None else await self._node(conn, thread_id, parent)
        if parent is not None and depth is None:
            # The branch it was written under is gone (deleted from another tab): the
            # message is kept, under the thread's active leaf.
            parent = thread.active_leaf_id
            depth = None if parent is None else await self._node(conn, thread_id, parent)
            if depth is None:
                parent = None
        if parent is None:
            forked = await conn.scalar(
                sql(
                    "SELECT 1 FROM steps WHERE thread_id = :thread AND tree_depth = 0"
                    " AND id != :id LIMIT 1"
                ),
                {"thread": thread_id, "id": step_id},
            )
        else:
            forked = await conn.scalar(
                sql(
                    "SELECT 1 FROM steps WHERE thread_id = :thread AND tree_parent_id = :parent"
                    " AND tree_depth >= 0 AND id != :id LIMIT 1"
                ),
                {"thread": thread_id, "parent": parent, "id": step_id},
            )
        active = place.activate is Activate.ALWAYS or (
            place.activate is Activate.IF_PARENT and thread.active_leaf_id in (parent, None)
        )
        change = None
        if active:
            choices = choices_of(thread.branch_choices)
            if parent is None or parent == thread.active_leaf_id:
                # The usual case: the path above is the active one, whose choices agree.
                if forked:
                    choices[ROOT if parent is None else parent] = step_id
            else:  # a branch the thread was not on (a stale tab, a regenerate): every
                # fork on its path is saved as the way to it
                rows = await self._skeleton(conn, thread_id)
                tree = Tree([*nodes_of(rows), Node(step_id, parent, "\uffff", 1 << 62)])
                choices = tree.choose(choices, step_id)
            change = TreeChange(step_id, choices)
        return Placed(parent, 0 if depth is None else depth + 1, change)

    @staticmethod
    async def _skeleton(conn: Connection, thread_id: str) -> list[Any]:
        """The nodes of a thread, as the tree logic reads them."""
        return list(
            (
                await conn.execute(
                    sql(
                        "SELECT id, parent_id, tree_parent_id, tree_depth, created_at, seq"
                        " FROM steps WHERE thread_id = :thread AND tree_depth >= 0"
                    ),
                    {"thread": thread_id},
                )
            ).all()
        )

    @staticmethod
    async def _node(
        conn: Connection, thread_id: str, node_id: str | None, *, user: bool = False
    ) -> int | None:
        """The depth of the node `node_id` of this thread (a user message's, with `user`);
        None if there is no such node."""
        if node_id is None:
            return None
        depth = await conn.scalar(
            sql(
                "SELECT tree_depth FROM steps WHERE id = :id AND thread_id = :thread"
                " AND tree_depth >= 0" + (" AND type = 'user_message'" if user else "")
            ),
            {"id": node_id, "thread": thread_id},
        )
        return None if depth is None else int(depth)

    @staticmethod
    async def _anchor(
        conn: Connection, thread_id: str, thread: LockedThread, step: StepDict
    ) -> str | None:
        """The node a step on top is shown after: the active leaf, or (a step made before
        it) the deepest node of its path made no later than the step."""
        leaf = thread.active_leaf_id
        if leaf is None:
            return None
        made = step.get("createdAt") or ""
        leaf_made = await conn.scalar(
            sql(
                "SELECT created_at FROM steps WHERE id = :id AND thread_id = :thread"
                " AND tree_depth >= 0"
            ),
            {"id": leaf, "thread": thread_id},
        )
        if leaf_made is None:
            return None
        if not made or leaf_made <= made:
            return leaf  # the usual case: one lookup
        tree = tree_of_rows(await TreeRows._skeleton(conn, thread_id))
        path = tree.path_to(leaf)
        n = made_before(made, [tree.nodes[node].created_at for node in path])
        return path[n] if n >= 0 else None

    async def delete_branch(
        self, conn: Connection, thread_id: str, thread: LockedThread, node_id: str
    ) -> Doomed:
        """Remove the branch through `node_id` (chatllm.store.tree.branch_of) and move the
        thread off it: to the branch chosen at its fork before, else the newest there.
        The caller removes the steps' search rows, elements and files."""
        rows = (
            await conn.execute(
                sql(
                    "SELECT id, parent_id, tree_parent_id, tree_depth, created_at, seq"
                    " FROM steps WHERE thread_id = :thread"
                ),
                {"thread": thread_id},
            )
        ).all()
        doomed = branch_of(rows, node_id, thread)
        await conn.execute(
            sql(
                "UPDATE threads SET active_leaf_id = :leaf, branch_choices = :choices"
                " WHERE id = :id"
            ),
            {
                "leaf": doomed.change.leaf,
                "choices": json.dumps(doomed.change.choices),
                "id": thread_id,
            },
        )
        return doomed

    async def choose_branch(
        self, conn: Connection, thread_id: str, thread: LockedThread, node_id: str
    ) -> TreeChange:
        """Open the branch through `node_id`: the leaf under it where the person was last
        (else its newest), and the choices along the path to it, saved at once."""
        tree = tree_of_rows(await self._skeleton(conn, thread_id))
        if node_id not in tree.nodes:
            raise BranchGone(f"{node_id!r} is not a message of thread {thread_id!r}")
        leaf, choices = tree.switch(node_id, choices_of(thread.branch_choices))
        await conn.execute(
            sql(
                "UPDATE threads SET active_leaf_id = :leaf, branch_choices = :choices"
                " WHERE id = :id"
            ),
            {"leaf": leaf, "choices": json.dumps(choices), "id": thread_id},
        )
        return TreeChange(leaf, choices)


@dataclass(frozen=True)
class Doomed:
    """What deleting a branch removes: its steps (the branch's messages, what is attached
    to them and nested under them) and the thread's leaf and choices after it."""

    steps: list[str]
    #: their `seq`s (their search rows' keys)
    seqs: list[int]
    change: TreeChange


def branch_of(rows: Sequence[Any], node_id: str, thread: LockedThread) -> Doomed:
    """The branch through `node_id` (the node and every node after it, with their
    attached and nested steps) from a thread's steps (id, parent_id, tree_parent_id,
    tree_depth, created_at, seq). A version that has no sibling is not a branch of its
    own: deleting it would take the conversation's end, so it is refused."""
    tree = tree_of_rows(rows)
    if node_id not in tree.nodes:
        raise BranchGone(f"{node_id!r} is not a message of this thread")
    if len(tree.siblings(node_id)) < 2:
        raise BranchKept(f"{node_id!r} is the only version there: kept")
    doomed = set(tree.subtree(node_id))
    nested: dict[str, list[str]] = {}
    for row in rows:
        if row.tree_depth == ATTACHED and row.tree_parent_id in doomed:
            doomed.add(row.id)
        elif row.tree_depth is None and row.parent_id is not None:
            nested.setdefault(row.parent_id, []).append(row.id)
    stack = list(doomed)
    while stack:  # what Chainlit nested under them (run steps, tool calls)
        for child in nested.get(stack.pop(), ()):
            if child not in doomed:
                doomed.add(child)
                stack.append(child)
    choices = {
        fork: child
        for fork, child in choices_of(thread.branch_choices).items()
        if fork not in doomed and child not in doomed
    }
    leaf = thread.active_leaf_id
    if leaf is None or leaf in doomed:
        parent = tree.parent(node_id)
        kept = Tree(n for n in tree.nodes.values() if n.id not in doomed)
        leaf = kept.descend(parent, choices)
    seqs = [int(row.seq) for row in rows if row.id in doomed]
    return Doomed(sorted(doomed), seqs, TreeChange(leaf, choices))


def placed_flat(
    steps: Sequence[Mapping[str, Any]], chosen: Mapping[str, str]
) -> tuple[dict[str, tuple[str | None, int]], TreeChange]:
    """A flat thread's tree as column values (step id → tree parent, depth) and the
    thread's leaf and choices."""
    flat = tree_of_flat(steps, chosen)
    depths: dict[str, int] = {}
    placed: dict[str, tuple[str | None, int]] = {}
    for node, parent in flat.nodes.items():  # each after the node it follows
        depths[node] = 0 if parent is None else depths[parent] + 1
        placed[node] = (parent, depths[node])
    placed.update({step: (anchor, ATTACHED) for step, anchor in flat.attached.items()})
    return placed, TreeChange(flat.leaf, dict(flat.choices))


#: Threads migration 7 reads at once.
MIGRATION_BATCH = 500


async def trees_from_flat_threads(conn: Connection) -> None:
    """Migration 7: every thread written before trees becomes one (chatllm.conversation.
    flat): its messages on one path, each with the reply it continued from, the other
    replies beside it; its notices, comparisons and replays attached where they stood.
    Only the tree columns and the thread metadata's `chosen_replies` (now the choices)
    change: no step is rewritten, and the thread's place in the list stays."""
    after = -1
    while True:
        threads = (
            await conn.execute(
                sql(
                    "SELECT id, seq, metadata FROM threads WHERE seq > :after"
                    " ORDER BY seq LIMIT :batch"
                ),
                {"after": after, "batch": MIGRATION_BATCH},
            )
        ).all()
        if not threads:
            return
        after = threads[-1].seq
        by_thread: dict[str, list[dict[str, Any]]] = {}
        params = {f"t{n}": t.id for n, t in enumerate(threads)}
        rows = await conn.execute(
            sql(
                "SELECT thread_id, id, parent_id, type, output, metadata FROM steps"
                f" WHERE thread_id IN ({', '.join(':' + k for k in params)})"
                " ORDER BY thread_id, created_at, seq"
            ),
            params,
        )
        for row in rows:
            by_thread.setdefault(row.thread_id, []).append(
                {
                    "id": row.id,
                    "parentId": row.parent_id,
                    "type": row.type,
                    "output": row.output,
                    # Only a message's marks decide its place: the rest (run steps,
                    # tool calls) need not be decoded.
                    "metadata": json.loads(row.metadata) if "message" in row.type else {},
                }
            )
        step_updates: list[dict[str, Any]] = []
        thread_updates: list[dict[str, Any]] = []
        for thread in threads:
            metadata = json.loads(thread.metadata)
            chosen = metadata.pop(CHOSEN_REPLIES, None)
            kept = thread.metadata if chosen is None else json.dumps(metadata, ensure_ascii=False)
            placed, change = placed_flat(
                by_thread.get(thread.id, []), chosen if isinstance(chosen, dict) else {}
            )
            step_updates.extend(
                {"id": step, "parent": parent, "depth": depth}
                for step, (parent, depth) in placed.items()
            )
            thread_updates.append(
                {
                    "id": thread.id,
                    "leaf": change.leaf,
                    "choices": json.dumps(change.choices),
                    "metadata": kept,
                }
            )
        if step_updates:
            await conn.execute(
                sql(
                    "UPDATE steps SET tree_parent_id = :parent, tree_depth = :depth WHERE id = :id"
                ),
                step_updates,
            )
        await conn.execute(
            sql(
                "UPDATE threads SET active_leaf_id = :leaf, branch_choices = :choices,"
                " metadata = :metadata WHERE id = :id"
            ),
            thread_updates,
        )
