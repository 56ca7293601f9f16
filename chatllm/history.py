"""Thread steps ⇄ the chain's chat history."""

from __future__ import annotations

from collections.abc import Iterable

from chainlit.step import StepDict
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

#: Marks a reply the chain produced (as opposed to notices and error messages, which are
#: assistant messages too); its value says why the reply ended.
FINISH_REASON = "finish_reason"


def history_from_steps(steps: Iterable[StepDict]) -> list[BaseMessage]:
    """The conversation as the model saw it, from a stored thread's steps.

    Steps are chosen by type: Chainlit nests replies under a run step, so keeping only
    top-level steps would drop every reply.
    """
    history: list[BaseMessage] = []
    for step in steps:
        text = step.get("output") or ""
        if step.get("type") == "user_message":
            history.append(HumanMessage(content=text))
        elif (
            step.get("type") == "assistant_message"
            and FINISH_REASON in (step.get("metadata") or {})
            and text
        ):
            history.append(AIMessage(content=text))
    return history
