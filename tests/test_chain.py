"""The chain: the model sees the system prompt, the history and the new message, trimmed to
its context oldest-first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatResult

from chatllm.chain import build_chain, chain_input, fit_to_context
from chatllm.errors import ContextOverflow
from chatllm.models import LocalBackend


def words(messages: Sequence[BaseMessage]) -> int:
    return sum(len(m.text.split()) + 1 for m in messages)


class RecordingChat(GenericFakeChatModel):
    """A scripted reply that remembers the messages it was given (its streaming goes
    through `_generate`)."""

    seen: ClassVar[list[list[BaseMessage]]] = []

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def exchange(n: int) -> list[BaseMessage]:
    return [HumanMessage(f"question {n} " + "w " * 8), AIMessage(f"answer {n} " + "w " * 8)]


def test_history_that_fits_is_passed_whole() -> None:
    messages = [SystemMessage("be brief"), *exchange(1), HumanMessage("next")]
    assert fit_to_context(messages, budget=1000, count=words) == messages


def test_long_history_drops_the_oldest_exchanges_first() -> None:
    history = [m for n in range(10) for m in exchange(n)]
    messages = [SystemMessage("be brief"), *history, HumanMessage("latest question")]
    fitted = fit_to_context(messages, budget=60, count=words)
    assert words(fitted) <= 60
    assert fitted[0] == messages[0]
    assert fitted[-1] == messages[-1]
    assert isinstance(fitted[1], HumanMessage)  # starts on a whole exchange
    kept = fitted[1:-1]
    assert kept == history[-len(kept) :]  # the newest turns survive
    assert len(kept) >= 2


def test_a_message_too_long_even_alone_is_refused_with_the_numbers() -> None:
    messages = [SystemMessage("be brief"), *exchange(1), HumanMessage("w " * 100)]
    with pytest.raises(ContextOverflow) as refused:
        fit_to_context(messages, budget=50, count=words)
    assert refused.value.available == 50
    assert refused.value.needed > 50


def test_an_empty_system_prompt_is_left_out() -> None:
    fitted = fit_to_context([SystemMessage(""), HumanMessage("hi")], budget=100, count=words)
    assert fitted == [HumanMessage("hi")]


def test_trimming_counts_real_tokens_of_the_local_model(local: LocalBackend) -> None:
    history = [m for n in range(40) for m in exchange(n)]
    messages = [SystemMessage("be brief"), *history, HumanMessage("latest")]
    fitted = fit_to_context(messages, budget=300, count=local.count_tokens)
    assert local.count_tokens(fitted) <= 300 < local.count_tokens(messages)
    assert fitted[-1].text == "latest"


async def test_the_model_receives_system_history_and_message_in_order() -> None:
    model = RecordingChat(messages=iter([AIMessage("scripted reply")]))
    RecordingChat.seen = []
    chain = build_chain(model, context_tokens=1000, reply_tokens=100, count=words)
    history = exchange(1)
    parts = [part async for part in chain.astream(chain_input("be brief", history, "and then?"))]
    assert "".join(parts) == "scripted reply"
    assert len(parts) > 1  # streamed, not delivered whole
    (received,) = RecordingChat.seen
    assert [m.type for m in received] == ["system", "human", "ai", "human"]
    assert received[0].text == "be brief"
    assert received[1:3] == history
    assert received[-1].text == "and then?"


async def test_braces_in_a_message_are_not_read_as_template_fields() -> None:
    model = RecordingChat(messages=iter([AIMessage("ok")]))
    RecordingChat.seen = []
    chain = build_chain(model, context_tokens=1000, reply_tokens=100, count=words)
    await chain.ainvoke(chain_input("sys {x}", [], "print({'a': 1}) {message}"))
    assert RecordingChat.seen[0][-1].text == "print({'a': 1}) {message}"
    assert RecordingChat.seen[0][0].text == "sys {x}"


async def test_reserving_room_for_the_reply_shrinks_the_prompt_budget() -> None:
    model = RecordingChat(messages=iter([AIMessage("ok")]))
    chain = build_chain(model, context_tokens=100, reply_tokens=95, count=words)
    with pytest.raises(ContextOverflow) as refused:
        await chain.ainvoke(chain_input("be brief", [], "one two three four five six"))
    assert refused.value.available == 5
