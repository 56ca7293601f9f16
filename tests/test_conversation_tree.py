"""The conversation tree's logic (chatllm.conversation.tree and .flat), on hand-made nodes
and on a flat thread shaped as today's release stores one: the path a page shows, the
branch found again at a fork, and a flat thread's tree keeping the model's memory and
every step."""

from __future__ import annotations

from typing import Any

import pytest

from chatllm.conversation.branches import branch_map
from chatllm.conversation.flat import tree_of_flat
from chatllm.conversation.marks import (
    CHOSEN_REPLIES,
    FINISH_REASON,
    KIND,
    REPLY_TO,
    is_conversation_reply,
)
from chatllm.conversation.memory import history_from_steps
from chatllm.conversation.tree import ROOT, Node, Tree


def tree(*edges: tuple[str, str | None]) -> Tree:
    """Nodes in the order given (that is their age)."""
    return Tree(Node(id, parent, created_at=f"{n:04d}") for n, (id, parent) in enumerate(edges))


# u1 ─ r1 ─ u2 ─ r2
#    └ r1b ─ u2b ─ r2b
#              └ r2c
EDITED = tree(
    ("u1", None),
    ("r1", "u1"),
    ("u2", "r1"),
    ("r2", "u2"),
    ("r1b", "u1"),
    ("u2b", "r1b"),
    ("r2b", "u2b"),
    ("r2c", "u2b"),
)


def test_a_path_runs_from_the_root_and_siblings_are_oldest_first() -> None:
    assert EDITED.path_to("r2c") == ["u1", "r1b", "u2b", "r2c"]
    assert EDITED.siblings("r1b") == ["r1", "r1b"]
    assert EDITED.siblings("u1") == ["u1"]  # no fork: no ‹ n/m ›
    assert EDITED.children(None) == ["u1"]


def test_without_choices_the_newest_branch_is_followed() -> None:
    assert EDITED.descend(None, {}) == "r2c"
    assert EDITED.descend("r1", {}) == "r2"
    assert EDITED.active_leaf(None, {}) == "r2c"


def test_the_branch_left_at_a_fork_is_the_branch_found_there_again() -> None:
    """Open r2b (the older reply under u2b), go over to the first branch, come back: the
    person lands on r2b, not on the newest reply."""
    leaf, choices = EDITED.switch("r1b", {})
    assert leaf == "r2c"
    choices = EDITED.choose(choices, "r2b")
    assert choices == {"u1": "r1b", "u2b": "r2b"}  # entries at forks only
    leaf, choices = EDITED.switch("r1", choices)
    assert (leaf, choices["u1"]) == ("r2", "r1")
    leaf, choices = EDITED.switch("r1b", choices)
    assert leaf == "r2b"
    assert EDITED.active_leaf("r2b", choices) == "r2b"
    assert EDITED.active_leaf("gone", choices) == "r2b"  # a stored leaf since deleted


def test_an_edit_of_the_first_message_is_a_root_fork() -> None:
    forked = tree(("u1", None), ("r1", "u1"), ("u1b", None), ("r1x", "u1b"))
    assert forked.siblings("u1b") == ["u1", "u1b"]
    assert forked.descend(None, {}) == "r1x"
    assert forked.choose({}, "r1") == {ROOT: "u1"}
    assert forked.descend(None, {ROOT: "u1"}) == "r1"


def test_no_node_is_lost_to_a_missing_parent_or_a_cycle() -> None:
    damaged = tree(("a", "b"), ("b", "a"), ("c", "nowhere"), ("d", "d"), ("e", "c"))
    reachable: list[str] = []
    stack: list[str | None] = [None]
    while stack:
        for child in damaged.children(stack.pop()):
            reachable.append(child)
            stack.append(child)
    assert sorted(reachable) == ["a", "b", "c", "d", "e"]
    assert damaged.path_to("e") == ["c", "e"]


# ---- a flat thread, as today's release stores one


def message(id: str, text: str) -> dict[str, Any]:
    return {"id": id, "type": "user_message", "parentId": None, "output": text, "metadata": {}}


def reply(id: str, to: str, text: str, kind: str = "reply", **extra: Any) -> dict[str, Any]:
    """A reply, nested (as Chainlit nests one) under its turn's run step."""
    metadata = {KIND: kind, REPLY_TO: to, FINISH_REASON: "stop", **extra}
    return {
        "id": id,
        "type": "assistant_message",
        "parentId": f"run-{to}",
        "output": text,
        "metadata": metadata,
    }


def top(id: str, kind: str | None = None, **extra: Any) -> dict[str, Any]:
    """A top-level assistant message that is not part of the talk (a notice, an error, a
    comparison's holder, a replay)."""
    metadata = {KIND: kind, **extra} if kind else {}
    return {
        "id": id,
        "type": "assistant_message",
        "parentId": None,
        "output": id,
        "metadata": metadata,
    }


def run(to: str) -> dict[str, Any]:
    """Chainlit's run step of a turn, nested under its user message."""
    return {"id": f"run-{to}", "type": "run", "parentId": to, "output": "", "metadata": {}}


FLAT = [
    top("welcome"),
    message("u1", "Name a colour."),
    run("u1"),
    reply("r1", "u1", "Blue."),
    message("u2", "Another one?"),
    run("u2"),
    reply("r2", "u2", "Green."),
    reply("v1", "u1", "Red.", kind="variant"),  # regenerated after u2 was answered
    top("replay-v1", kind="replay", replay_of="v1"),
    top("replay-r2", kind="replay", replay_of="r2"),
    message("u3", "Compare these."),
    top("compare-u3", kind="compare", reply_to="u3"),
    message("u4", "And a stopped one?"),  # no reply (stopped before the first token)
    top("stop-notice"),
    reply("orphan", "deleted-message", "An answer to a message no longer there."),
]


@pytest.mark.parametrize("chosen", [{}, {"u1": "r1"}, {"u1": "v1"}])
def test_a_flat_thread_becomes_a_tree_keeping_the_memory_and_every_step(
    chosen: dict[str, str],
) -> None:
    flat = tree_of_flat(FLAT, chosen)
    nodes = Tree(
        Node(id, parent, seq=n)
        for n, (id, parent) in enumerate(flat.nodes.items())  # written order is age
    )
    path = nodes.path_to(flat.leaf) if flat.leaf else []
    on_path = [step for step in FLAT if step["id"] in path]
    # The model remembers exactly what it remembered before the tree.
    assert history_from_steps(on_path) == history_from_steps(FLAT, chosen)
    # Every message stays on the path, in order; the replies not taken are one switch away.
    assert [s for s in path if s.startswith("u")] == ["u1", "u2", "u3", "u4"]
    taken = chosen.get("u1", "v1")  # without a choice, the newest
    assert taken in path and nodes.siblings(taken) == ["r1", "v1"]
    assert flat.choices == {"u1": taken}
    assert nodes.parent("u2") == taken  # u2 follows the reply the talk continued from
    # Nothing left out: every top-level step and every reply has a place.
    placed = set(flat.nodes) | set(flat.attached)
    assert {s["id"] for s in FLAT if not s["parentId"] or is_conversation_reply(s)} <= placed
    assert "run-u1" not in placed  # nested: shown with what it is nested under
    assert flat.attached["welcome"] is None  # shown first, on every path
    assert flat.attached["compare-u3"] == "u3"
    assert flat.attached["stop-notice"] == "u4"
    assert flat.attached["orphan"] == "u4"  # where it stood
    # A replay goes with the reply it checked when that reply is off the path.
    assert flat.attached["replay-r2"] == "r2"
    side = "r1" if taken == "v1" else "v1"
    replay_of_side = f"replay-{side}" if side == "v1" else None
    if replay_of_side:
        assert flat.attached[replay_of_side] == "v1"
    assert flat.leaf == "u4"
    assert CHOSEN_REPLIES  # the thread key the migration moves into the choices


def test_the_branch_map_lists_each_leaf_once_in_tree_order_named_where_it_parts() -> None:
    def node(sid: str, parent: str | None, n: int, typed: str = "assistant_message") -> Any:
        return {"id": sid, "treeParentId": parent, "treeDepth": 0, "type": typed,
                "output": f"text of {sid}", "createdAt": f"{n:04d}"}  # fmt: skip

    edges = [
        ("u1", None), ("r1", "u1"), ("u2", "r1"), ("r2", "u2"),
        ("r1b", "u1"), ("u2b", "r1b"), ("r2b", "u2b"), ("r2c", "u2b"),
    ]  # fmt: skip
    steps = [
        node(i, p, n, "user_message" if i.startswith("u") else "assistant_message")
        for n, (i, p) in enumerate(edges)
    ]
    steps.append({"id": "note", "treeParentId": "r2", "treeDepth": -1, "output": "notice"})
    rows = branch_map(steps, current="r2b")
    assert [(r.id, r.parted_at, r.depth, r.messages) for r in rows] == [
        ("r2", "r1", 0, 4),
        ("r2b", "r2b", 1, 4),
        ("r2c", "r2c", 1, 4),
    ]
    assert [r.current for r in rows] == [False, True, False]
    assert rows[0].label == "text of r1" and rows[0].role == "assistant"
    # A long conversation is one row, read without recursion.
    chain = [node(f"n{n}", f"n{n - 1}" if n else None, n) for n in range(3000)]
    (only,) = branch_map(chain, current=None)
    assert (only.id, only.messages) == ("n2999", 3000)
