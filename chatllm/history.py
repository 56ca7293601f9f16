"""Thread steps ⇄ the chain's chat history, and how a reply step is marked.

A reply step's metadata:

    finish_reason  why it ended; marks a reply the chain produced (notices and errors are
                   assistant messages too, without it)
    kind           "reply" (a chat turn), "variant" (regenerated), "replay" (a seed check)
                   or "compare" (a side-by-side comparison, its replies in "compare")
    reply_to       the id of the user message it answers
    receipt        what made it and how fast it came (chatllm.receipts.Receipt)

Thread metadata "chosen_replies" maps a user message id to the reply (or variant) the
conversation continues from; without a choice the newest one counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from chatllm.receipts import RECEIPT, Receipt

if TYPE_CHECKING:  # Chainlit's types only: the history needs no UI
    from chainlit.step import StepDict

FINISH_REASON = "finish_reason"
KIND = "kind"
REPLY_TO = "reply_to"
CHOSEN_REPLIES = "chosen_replies"

#: Kinds of reply the model remembers; a replay or a comparison is not part of the talk.
CONVERSATION_KINDS = frozenset({"reply", "variant"})


def reply_metadata(receipt: Receipt, reply_to: str, kind: str) -> dict[str, Any]:
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


def history_from_steps(
    steps: Iterable[StepDict],
    chosen: Mapping[str, str] | None = None,
    *,
    before: str | None = None,
) -> list[BaseMessage]:
    """The conversation as the model remembers it: each user message with the reply the
    conversation continues from, up to (not including) the message `before` if given.
    Unanswered messages (an error, a stop before the first token) are left out, so user
    and assistant turns alternate as chat templates require."""
    messages, replies = replies_by_message(steps)
    history: list[BaseMessage] = []
    for message in messages:
        if message["id"] == before:
            break
        reply = chosen_reply(message["id"], replies, chosen or {})
        if reply is not None:
            history.extend(
                [
                    HumanMessage(content=message.get("output") or ""),
                    AIMessage(content=reply["output"]),
                ]
            )
    return history
