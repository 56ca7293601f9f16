"""Thread steps as the model remembers them (chatllm.conversation.memory), on hand-made steps: which
steps are the conversation's replies, and the rules for replies stored before replies
named their message."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from chatllm.conversation.marks import is_conversation_reply
from chatllm.conversation.memory import history_from_steps


def user(step_id: str, text: str) -> dict[str, Any]:
    return {"id": step_id, "type": "user_message", "output": text, "metadata": {}}


def reply(step_id: str, text: str, **metadata: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "assistant_message",
        "output": text,
        "metadata": {"finish_reason": "stop", **metadata},
    }


def test_a_reply_of_the_conversation_is_one() -> None:
    assert is_conversation_reply(reply("a", "yes", kind="reply"))
    assert is_conversation_reply(reply("a", "yes", kind="variant"))
    assert is_conversation_reply(reply("a", "yes"))  # stored before replies had a kind


@pytest.mark.parametrize(
    "step",
    [
        reply("a", "a comparison's holder", kind="compare"),
        reply("a", "a replay, shown beside the reply", kind="replay"),
        {"id": "a", "type": "assistant_message", "output": "an error", "metadata": {}},
        reply("a", ""),  # nothing was written
        {"id": "a", "type": "run", "output": "on_message", "metadata": {"finish_reason": "x"}},
    ],
    ids=["compare", "replay", "no finish reason", "empty", "run step"],
)
def test_other_steps_are_not_replies_of_the_conversation(step: dict[str, Any]) -> None:
    assert not is_conversation_reply(step)


def test_a_reply_without_its_message_answers_the_one_just_before() -> None:
    steps = [user("u1", "hi"), reply("a1", "first"), user("u2", "again"), reply("a2", "second")]
    assert history_from_steps(steps) == [
        HumanMessage("hi"),
        AIMessage("first"),
        HumanMessage("again"),
        AIMessage("second"),
    ]


def test_a_second_reply_without_its_message_is_not_taken_for_the_first_ones() -> None:
    steps = [user("u1", "hi"), reply("a1", "first"), reply("a2", "second")]
    assert history_from_steps(steps) == [HumanMessage("hi"), AIMessage("first")]


def test_a_reply_whose_message_is_gone_is_left_out() -> None:
    assert history_from_steps([reply("a0", "orphan", reply_to="gone")]) == []
    assert history_from_steps([reply("a0", "orphan"), user("u1", "hi")]) == []
