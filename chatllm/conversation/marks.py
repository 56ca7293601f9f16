"""How a reply step is marked, and which steps the conversation is made of.

A reply step's metadata:

    finish_reason  why it ended; marks a reply the chain produced (notices and errors are
                   assistant messages too, without it)
    kind           "reply" (a chat turn), "variant" (regenerated), "replay" (a seed check)
                   or "compare" (a side-by-side comparison, its replies in "compare")
    reply_to       the id of the user message it answers
    receipt        what made it and how fast it came (chatllm.receipts.Receipt)

Thread metadata "chosen_replies" maps a user message id to the reply (or variant) the
conversation continues from; without a choice the newest one counts.

Pure: no LangChain, no Chainlit at import (the share view reads these marks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: the marks need no UI and no model
    from chainlit.step import StepDict

    from chatllm.receipts import Receipt

FINISH_REASON = "finish_reason"
KIND = "kind"
REPLY_TO = "reply_to"
CHOSEN_REPLIES = "chosen_replies"
#: A replay's metadata: the id of the reply it replays.
REPLAY_OF = "replay_of"

#: Kinds of reply the model remembers; a replay or a comparison is not part of the talk.
CONVERSATION_KINDS = frozenset({"reply", "variant"})


def reply_metadata(receipt: Receipt, reply_to: str, kind: str) -> dict[str, Any]:
    from chatllm.receipts import RECEIPT

    metadata: dict[str, Any] = {KIND: kind, REPLY_TO: reply_to, RECEIPT: receipt.model_dump()}
    if kind in CONVERSATION_KINDS:
        metadata[FINISH_REASON] = receipt.finish_reason
    return metadata


def is_conversation_reply(step: Mapping[str, Any]) -> bool:
    metadata = step.get("metadata") or {}
    return (
        step.get("type") == "assistant_message"
        and FINISH_REASON in metadata
        and metadata.get(KIND, "reply") in CONVERSATION_KINDS
        and bool(step.get("output"))
    )


def replies_by_message(
    steps: Iterable[StepDict],
) -> tuple[list[StepDict], dict[str, list[StepDict]]]:
    """The user messages in order, and the replies (variants included) each one got.

    Steps are chosen by type: Chainlit nests replies under a run step, so keeping only
    top-level steps would drop every reply. A reply stored before replies named their
    message (no `reply_to`) answers the message just before it.
    """
    messages: list[StepDict] = []
    replies: dict[str, list[StepDict]] = {}
    unanswered: str | None = None
    for step in steps:
        if step.get("type") == "user_message":
            messages.append(step)
            unanswered = step["id"]
        elif is_conversation_reply(step):
            target = (step.get("metadata") or {}).get(REPLY_TO) or unanswered
            if target is None:
                continue
            replies.setdefault(target, []).append(step)
            if target == unanswered:
                unanswered = None
    return messages, replies


def chosen_reply(
    message_id: str, replies: Mapping[str, list[StepDict]], chosen: Mapping[str, str]
) -> StepDict | None:
    """The reply the conversation continues from: the chosen one, else the newest."""
    candidates = replies.get(message_id) or []
    pick = chosen.get(message_id)
    for step in candidates:
        if step["id"] == pick:
            return step
    return candidates[-1] if candidates else None
