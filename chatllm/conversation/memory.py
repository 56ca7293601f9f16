"""Thread steps as the chain's chat history: what the model remembers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from chatllm.conversation.marks import chosen_reply, replies_by_message

if TYPE_CHECKING:  # Chainlit's types only: the history needs no UI
    from chainlit.step import StepDict


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
