"""The tree a flat thread becomes: one written before trees (issue 26; see
docs/conversation-tree-plan.md, §1), whose regenerated replies ("variant") sit beside the
reply they stood in for and whose thread metadata names the reply each message continues
from (`chosen_replies`).

Every user message goes on the main path, each followed by its chosen reply (else its
newest, as the model's memory took it); its other replies become that reply's siblings.
The other top-level steps (notices, errors, comparisons, replays, a command's files) are
attached to the node they followed, so they show where they stood; a replay of a reply
that was not chosen goes with that reply. Steps Chainlit nests under others are placed by
what they are nested under, not here. Nothing is left out: a reply to a message the thread
no longer holds is attached where it stood.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatllm.conversation.marks import (
    REPLAY_OF,
    chosen_reply,
    is_conversation_reply,
    replies_by_message,
)


@dataclass(frozen=True)
class FlatTree:
    """Where each step of a flat thread goes in its tree."""

    #: node id → the node it follows (None: the root)
    nodes: dict[str, str | None]
    #: top-level step that is not a node → the node it is shown after (None: first)
    attached: dict[str, str | None]
    #: the end of the main path: the thread's active leaf
    leaf: str | None
    #: at each message with several replies, the one the main path takes
    choices: dict[str, str]


def tree_of_flat(steps: Sequence[Mapping[str, Any]], chosen: Mapping[str, str]) -> FlatTree:
    """The tree of a flat thread's `steps` (in the order they were written) with its
    `chosen` replies."""
    messages, replies = replies_by_message(steps)  # type: ignore[arg-type]
    message_ids = {m["id"] for m in messages}
    picked = {
        m["id"]: reply["id"]
        for m in messages
        if (reply := chosen_reply(m["id"], replies, chosen)) is not None
    }
    placed_replies = {
        r["id"]: target
        for target, answers in replies.items()
        if target in message_ids
        for r in answers
    }
    nodes: dict[str, str | None] = {}
    attached: dict[str, str | None] = {}
    tail: str | None = None
    for step in steps:
        sid = step["id"]
        if step.get("type") == "user_message":
            nodes[sid] = tail
            tail = sid
            for reply in replies.get(sid, ()):
                nodes[reply["id"]] = sid
            if sid in picked:
                tail = picked[sid]
        elif sid in placed_replies:
            continue  # placed with its message
        elif not step.get("parentId"):
            attached[sid] = _anchor(step, tail, nodes, picked)
        elif is_conversation_reply(step):
            attached[sid] = tail  # a reply to a message the thread no longer holds
    choices = {m: picked[m] for m, answers in replies.items() if m in picked and len(answers) > 1}
    return FlatTree(nodes=nodes, attached=attached, leaf=tail, choices=choices)


def _anchor(
    step: Mapping[str, Any],
    tail: str | None,
    nodes: Mapping[str, str | None],
    picked: Mapping[str, str],
) -> str | None:
    """The node a top-level step that is not a node is shown after: where it stood on the
    main path, except a replay of a reply not on it, which goes with that reply."""
    replayed = (step.get("metadata") or {}).get(REPLAY_OF)
    if isinstance(replayed, str) and replayed in nodes and replayed not in picked.values():
        return replayed
    return tail
