"""Thread steps ⇄ the chain's chat history."""

from __future__ import annotations

from collections.abc import Iterable

from chainlit.step import StepDict
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

#: Marks a reply the chain produced (as opposed to notices and error messages, which are
#: assistant messages too); its value says why the reply ended.
FINISH_REASON = "finish_reason"


def history_from_steps(steps: Iterable[StepDict]) -> list[BaseMessage]:
    """The conversation as the model remembers it, from a stored thread's steps: each
    user message with the reply it got. Unanswered messages (an error, a stop before the
    first token) are left out, so user and assistant turns alternate as chat templates
    require.

    Steps are chosen by type: Chainlit nests replies under a run step, so keeping only
    top-level steps would drop every reply.
    """
    history: list[BaseMessage] = []
    asked: str | None = None
    for step in steps:
        text = step.get("output") or ""
        if step.get("type") == "user_message":
            asked = text  # a message that got no reply is superseded by the next one
        elif (
            step.get("type") == "assistant_message"
            and FINISH_REASON in (step.get("metadata") or {})
            and text
            and asked is not None
        ):
            history.extend([HumanMessage(content=asked), AIMessage(content=text)])
            asked = None
    return history
