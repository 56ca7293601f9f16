"""The tree a conversation forms (issue 26; see docs/conversation-tree-plan.md).

Each message follows the one it answers or continues: a user message follows the reply
before it, a reply its user message. An edited message or a regenerated reply is then a
sibling of the one it stands beside, and what a page shows is the path from the root to
the thread's active leaf. At each fork the child last chosen there is remembered
(`choices`, keyed by the fork's id, `ROOT` for the first messages), so going back to a
fork lands where the person was under it.

Pure: ids, parents and an order in; ids out. Nothing here drops a node: one whose parent
is not in the thread, or whose parents go round in a cycle (a damaged row), is a root.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

#: The key of the root fork in `choices` (several first messages, after an edit of the
#: first one).
ROOT = ""


@dataclass(frozen=True)
class Node:
    """A message of the tree: its id, the node it follows (None for a root), and its
    place in time (siblings are ordered oldest first: by `created_at`, then `seq`)."""

    id: str
    parent: str | None
    created_at: str = ""
    seq: int = 0


class Tree:
    """The nodes of one thread, with their children in order."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = {node.id: node for node in nodes}
        self._parent: dict[str, str | None] = {
            n.id: n.parent if n.parent in self.nodes and n.parent != n.id else None
            for n in self.nodes.values()
        }
        self._roots_for_cycles()
        order = sorted(self.nodes.values(), key=lambda n: (n.created_at, n.seq, n.id))
        self._children: dict[str | None, list[str]] = {}
        for node in order:
            self._children.setdefault(self._parent[node.id], []).append(node.id)

    def _roots_for_cycles(self) -> None:
        """A node none of whose ancestors is a root sits on a cycle: it becomes a root,
        so that every node is reachable from the top."""
        reaches_root: set[str] = set()
        for start in self.nodes:
            trail: list[str] = []
            seen: set[str] = set()
            node: str | None = start
            while node is not None and node not in reaches_root and node not in seen:
                seen.add(node)
                trail.append(node)
                node = self._parent[node]
            if node is not None and node not in reaches_root:  # went round: cut it here
                self._parent[node] = None
            reaches_root.update(trail)

    def parent(self, node: str) -> str | None:
        return self._parent[node]

    def children(self, node: str | None) -> list[str]:
        """The nodes that follow `node` (None: the roots), oldest first."""
        return list(self._children.get(node, ()))

    def siblings(self, node: str) -> list[str]:
        """`node` and the others beside it, oldest first (what ‹ n/m › counts)."""
        return self.children(self._parent[node])

    def subtree(self, node: str) -> list[str]:
        """`node` and every node after it, on every branch."""
        found: list[str] = []
        stack = [node]
        while stack:
            current = stack.pop()
            found.append(current)
            stack.extend(self.children(current))
        return found

    def path_to(self, node: str) -> list[str]:
        """The nodes from the root down to `node`, both included."""
        path: list[str] = []
        current: str | None = node
        while current is not None:
            path.append(current)
            current = self._parent[current]
        return path[::-1]

    def descend(self, start: str | None, choices: Mapping[str, str]) -> str | None:
        """The leaf reached from `start` (None: the top) by taking, at each fork, the child
        chosen there last, else the newest (a thread without choices continues from its
        newest replies, as before there were trees)."""
        node = start
        while kids := self.children(node):
            pick = choices.get(ROOT if node is None else node)
            node = pick if pick in kids else kids[-1]
        return node

    def active_leaf(self, stored: str | None, choices: Mapping[str, str]) -> str | None:
        """The thread's active leaf: the one stored if it is still a node of the thread,
        else where the choices lead from the top."""
        if stored is not None and stored in self.nodes:
            return stored
        return self.descend(None, choices)

    def choose(self, choices: Mapping[str, str], leaf: str) -> dict[str, str]:
        """`choices` with, at every fork on the path to `leaf`, the path's child: what is
        saved when a person opens that leaf. Forks elsewhere keep their choice."""
        chosen = dict(choices)
        above: str | None = None
        for node in self.path_to(leaf):
            if len(self.children(above)) > 1:
                chosen[ROOT if above is None else above] = node
            above = node
        return chosen

    def switch(self, to: str, choices: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        """A person switching to the sibling `to`: the leaf they find there (where they
        were under it, else its newest branch) and the choices to save."""
        leaf = self.descend(to, choices)
        assert leaf is not None  # `to` is a node, so the descent ends on one
        return leaf, self.choose(choices, leaf)


#: A step's `tree_depth` when it is not a message of the tree but is shown after one (a
#: notice, an error, a comparison, a replay): its `tree_parent_id` is that node, or None
#: for "before the first message". A node's depth is ≥ 0; a step that is neither (a step
#: nested by Chainlit under another, a row written before trees) has None.
ATTACHED = -1


class Skeleton(Protocol):
    """What the tree logic reads of a stored step."""

    @property
    def id(self) -> str: ...
    @property
    def parent_id(self) -> str | None: ...  # Chainlit's nesting
    @property
    def tree_parent_id(self) -> str | None: ...
    @property
    def tree_depth(self) -> int | None: ...
    @property
    def created_at(self) -> str: ...
    @property
    def seq(self) -> int: ...


@dataclass(frozen=True)
class Page:
    """What a page of a thread shows: its steps in order, the leaf, and at each node of the
    path that has siblings, those siblings (itself included, oldest first)."""

    order: list[str]
    leaf: str | None
    siblings: dict[str, list[str]]
    path: list[str]


def nodes_of(rows: Iterable[Skeleton]) -> list[Node]:
    """The nodes among stored steps."""
    return [
        Node(row.id, row.tree_parent_id, row.created_at or "", row.seq)
        for row in rows
        if row.tree_depth is not None and row.tree_depth >= 0
    ]


def tree_of_rows(rows: Iterable[Skeleton]) -> Tree:
    return Tree(nodes_of(rows))


def page(rows: Sequence[Skeleton], leaf: str | None, choices: Mapping[str, str]) -> Page:
    """The steps a page of the thread shows for `leaf` (the stored leaf, or where the
    choices lead if it is gone): the nodes on the path to it, what is attached to them,
    and what Chainlit nested under those. Each step comes after the one it is nested
    under (Chainlit's page drops a step whose parent it has not seen); the groups (a node
    with what it holds and what is attached to it, in time order within) in path order —
    not by time, since a reply chosen late may stand before a later message.

    A thread with no nodes (written before trees, or by Chainlit alone) is shown whole in
    time order."""
    by_time = sorted(rows, key=lambda r: (r.created_at or "", r.seq))
    tree = tree_of_rows(by_time)
    if not tree.nodes:
        return Page([r.id for r in by_time], None, {}, [])
    end = tree.active_leaf(leaf, choices)
    assert end is not None  # the tree has nodes
    path = tree.path_to(end)
    where = {node: n for n, node in enumerate(path)}
    ids = {r.id for r in by_time}
    nested: dict[str, list[Skeleton]] = {}
    groups: dict[int, list[Skeleton]] = {}
    for row in by_time:
        depth = row.tree_depth
        if depth is not None and depth >= 0:
            if row.id in where:
                groups.setdefault(where[row.id], []).append(row)
        elif depth == ATTACHED and (row.tree_parent_id is None or row.tree_parent_id in tree.nodes):
            if row.tree_parent_id is None:
                groups.setdefault(-1, []).append(row)
            elif row.tree_parent_id in where:
                groups.setdefault(where[row.tree_parent_id], []).append(row)
        elif row.parent_id is not None and row.parent_id in ids:
            nested.setdefault(row.parent_id, []).append(row)
        else:  # unplaced and on top: shown after the last node of the path made before it
            groups.setdefault(_by_time(row, path, tree), []).append(row)
    order: list[str] = []

    def emit(row: Skeleton) -> None:
        stack = [row]
        while stack:
            step = stack.pop()
            order.append(step.id)
            stack.extend(reversed(nested.get(step.id, ())))

    for n in sorted(groups):
        # A node's group in time order: the node, what is attached to it, and steps on
        # top written before trees that stood there; each with what it holds.
        for row in sorted(groups[n], key=lambda r: (r.created_at or "", r.seq)):
            emit(row)
    siblings = {node: kin for node in path if len(kin := tree.siblings(node)) > 1}
    return Page(order, end, siblings, path)


def _by_time(row: Skeleton, path: Sequence[str], tree: Tree) -> int:
    """Where on `path` a step placed by its time goes: after the nodes from the top made
    no later than it, up to the first one made after it (-1: before them all)."""
    return made_before(row.created_at or "", [tree.nodes[node].created_at for node in path])


def made_before(at: str, times: Sequence[str]) -> int:
    """The index of the last of `times` (a path's, from the top) before the first one
    later than `at`; -1 if the first is later. A path's times need not rise (a reply
    chosen after later messages were sent stands before them), so this walks down."""
    n = -1
    for time in times:
        if time > at:
            break
        n += 1
    return n
