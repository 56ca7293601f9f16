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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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
