"""The branch map: every leaf of a conversation's tree on one line each, in the tree's
order, so that a person comparing five rewordings finds each at a glance and opens it.

A leaf is named by the message where its branch parts from the others (the last fork on
its path: an edited message, a regenerated reply), with its first words, when the branch
last grew, how many messages its path holds, and the model and sampling of its last
reply. Flat: one row per leaf however deep the tree (no recursion to render).

Pure: the store's steps (with their tree fields) in, rows out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatllm.conversation.tree import Node, Tree

#: The words of a message a row shows.
LABEL_CHARS = 60


@dataclass(frozen=True)
class Leaf:
    """One branch of the conversation, as the map shows it."""

    id: str
    #: the message where this branch parts from the others (its first words in `label`)
    parted_at: str
    label: str
    #: "user" (an edited message) or "assistant" (a regenerated reply)
    role: str
    #: how many forks lie above the parting message: the row's indent
    depth: int
    messages: int
    #: when the branch last grew: its leaf's time
    when: str
    #: the last reply's model and sampling on this path (None: no reply yet)
    model: str | None
    sampling: dict[str, Any]
    current: bool


def branch_map(steps: Sequence[Mapping[str, Any]], current: str | None) -> list[Leaf]:
    """The leaves of the tree the steps form (only nodes count: `treeDepth` ≥ 0), in
    depth-first order, oldest branch first; `current` marks the one on screen."""
    by_id = {s["id"]: s for s in steps if _is_node(s)}
    tree = Tree(
        Node(s["id"], s.get("treeParentId"), s.get("createdAt") or "", n)
        for n, s in enumerate(steps)
        if _is_node(s)
    )
    leaves: list[Leaf] = []
    stack = list(reversed(tree.children(None)))
    while stack:
        node = stack.pop()
        kids = tree.children(node)
        if kids:
            stack.extend(reversed(kids))
            continue
        path = tree.path_to(node)
        forks = [n for n in path if len(tree.siblings(n)) > 1]
        parted = forks[-1] if forks else path[0]
        step = by_id[parted]
        reply = next(
            (by_id[n] for n in reversed(path) if by_id[n].get("type") == "assistant_message"),
            None,
        )
        receipt = ((reply or {}).get("metadata") or {}).get("receipt") or {}
        leaves.append(
            Leaf(
                id=node,
                parted_at=parted,
                label=_first_words(step.get("output") or ""),
                role="user" if step.get("type") == "user_message" else "assistant",
                depth=max(len(forks) - 1, 0),
                messages=len(path),
                when=by_id[node].get("createdAt") or "",
                model=receipt.get("model"),
                sampling=dict(receipt.get("sampling") or {}),
                current=node == current,
            )
        )
    return leaves


def _is_node(step: Mapping[str, Any]) -> bool:
    depth = step.get("treeDepth")
    return isinstance(depth, int) and depth >= 0


def _first_words(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= LABEL_CHARS else line[: LABEL_CHARS - 1].rstrip() + "…"
