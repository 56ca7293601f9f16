"""The chain: the model sees the system prompt, the history and the new message, trimmed to
its context oldest-first."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult, LLMResult

from chatllm.backends.local import LocalBackend
from chatllm.chain import ReplyRecord, build_chain, chain_input, fit_to_context
from chatllm.errors import ContextOverflow, describe


def words(messages: Sequence[BaseMessage]) -> int:
    return sum(len(m.text.split()) + 1 for m in messages)


class RecordingChat(GenericFakeChatModel):
    """A scripted reply that remembers the messages it was given (its streaming goes
    through `_generate`)."""

    seen: ClassVar[list[list[BaseMessage]]] = []

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def recording_chain(reply: str = "ok", **options: Any) -> Any:
    """The app's chain over a `RecordingChat` scripted to `reply`, its record emptied;
    `options` are `build_chain`'s (a 1000-token context, 10 for the reply, counted in words,
    unless given)."""
    RecordingChat.seen = []
    settings: dict[str, Any] = {"context_tokens": 1000, "reply_tokens": 10, "count": words}
    return build_chain(RecordingChat(messages=iter([AIMessage(reply)])), **{**settings, **options})


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
    chain = recording_chain("scripted reply", reply_tokens=100)
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
    chain = recording_chain(reply_tokens=100)
    await chain.ainvoke(chain_input("sys {x}", [], "print({'a': 1}) {message}"))
    assert RecordingChat.seen[0][-1].text == "print({'a': 1}) {message}"
    assert RecordingChat.seen[0][0].text == "sys {x}"


async def test_reserving_room_for_the_reply_shrinks_the_prompt_budget() -> None:
    chain = recording_chain(context_tokens=100, reply_tokens=95)
    with pytest.raises(ContextOverflow) as refused:
        await chain.ainvoke(chain_input("be brief", [], "one two three four five six"))
    assert refused.value.available == 5


def test_a_prompt_that_fills_the_budget_exactly_is_passed_whole() -> None:
    messages = [SystemMessage("be brief"), *exchange(1), HumanMessage("next")]
    exact = words(messages)
    assert fit_to_context(messages, budget=exact, count=words) == messages
    assert len(fit_to_context(messages, budget=exact - 1, count=words)) == 2  # the exchange goes


def test_the_system_prompt_and_message_alone_may_fill_the_budget_exactly() -> None:
    messages = [SystemMessage("be brief"), *exchange(1), HumanMessage("w " * 20)]
    alone = [messages[0], messages[-1]]
    assert fit_to_context(messages, budget=words(alone), count=words) == alone
    with pytest.raises(ContextOverflow) as refused:
        fit_to_context(messages, budget=words(alone) - 1, count=words)
    assert (refused.value.needed, refused.value.available) == (words(alone), words(alone) - 1)


def test_a_budget_below_zero_is_told_as_no_room_at_all() -> None:
    with pytest.raises(ContextOverflow) as refused:
        fit_to_context([HumanMessage("hello")], budget=-5, count=words)
    assert refused.value.available == 0


def test_trimming_keeps_messages_whole_or_drops_them() -> None:
    history = [HumanMessage("a\n" * 30), AIMessage("b\n" * 30)]  # lines it could cut at
    messages = [SystemMessage("s"), *history, HumanMessage("latest")]
    fitted = fit_to_context(messages, budget=words(messages) - 5, count=words)
    assert fitted == [messages[0], messages[-1]]  # never half of a long message


def test_without_a_system_prompt_the_newest_exchanges_still_fit() -> None:
    history = [m for n in range(6) for m in exchange(n)]
    messages = [*history, HumanMessage("latest question")]
    fitted = fit_to_context(messages, budget=40, count=words)
    assert fitted[-1] == messages[-1] and isinstance(fitted[0], HumanMessage)
    assert fitted[:-1] == history[-(len(fitted) - 1) :]


async def test_the_chain_prepares_the_counts_before_it_trims() -> None:
    """The local model counts tokens in its engine process: the chain awaits `prepare` with
    the prompt's messages, and only then counts them (synchronously) to trim."""
    prepared: list[list[str]] = []

    async def prepare(messages: Sequence[BaseMessage]) -> None:
        prepared.append([m.text for m in messages])

    def count(messages: Sequence[BaseMessage]) -> int:
        assert prepared, "counted before the counts were prepared"
        assert all(m.text in prepared[-1] for m in messages)
        return words(messages)

    chain = recording_chain(count=count, prepare=prepare)
    reply = "".join([p async for p in chain.astream(chain_input("be brief", [], "hello"))])
    assert reply == "ok"
    assert prepared == [["be brief", "hello"]]


async def test_the_reply_record_keeps_what_the_model_got_and_reported() -> None:
    record = ReplyRecord()
    assert (record.usage, record.finish_reason, record.prompt) == (None, None, [])
    prompt = [SystemMessage("be brief"), HumanMessage("hello")]
    await record.on_chat_model_start({}, [prompt])
    message = AIMessage(
        "hi",
        response_metadata={"model_name": "m"},
        usage_metadata={"input_tokens": 12, "output_tokens": 3, "total_tokens": 15},
    )
    generation = ChatGeneration(message=message, generation_info={"finish_reason": "length"})
    await record.on_llm_end(LLMResult(generations=[[generation]]))
    assert record.prompt == prompt
    assert record.usage == (12, 3)
    assert record.finish_reason == "length"
    assert record.info["model_name"] == "m"


async def test_a_reply_record_without_usage_says_so() -> None:
    record = ReplyRecord()
    await record.on_llm_end(LLMResult(generations=[[ChatGeneration(message=AIMessage("hi"))]]))
    assert record.usage is None and record.finish_reason is None
    await record.on_llm_end(LLMResult(generations=[]))  # nothing reported at all
    assert record.usage is None


def test_a_synchronous_run_of_the_chain_sends_the_same_prompt() -> None:
    chain = recording_chain()
    assert chain.invoke(chain_input("be brief", exchange(1), "hello")) == "ok"
    (seen,) = RecordingChat.seen
    assert [m.text for m in seen] == ["be brief", *[m.text for m in exchange(1)], "hello"]


class ChainRuns(AsyncCallbackHandler):
    """The chain's own run as the callbacks see it (its parent is none)."""

    run_inline = True

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    async def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        if kwargs.get("parent_run_id") is None:
            self.events.append(("start", kwargs.get("name")))

    async def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        if kwargs.get("parent_run_id") is None:
            self.events.append(("end", outputs))

    async def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        if kwargs.get("parent_run_id") is None:
            self.events.append(("error", type(error).__name__))


async def streamed_with_tasks(words_in_reply: int) -> tuple[str, int, list[tuple[str, Any]]]:
    """A reply of that many words streamed through the chain: the text, how many asyncio
    tasks were made meanwhile, and the chain's run as its callbacks saw it."""
    reply = " ".join(f"w{n}" for n in range(words_in_reply))
    chain = recording_chain(reply)
    runs = ChainRuns()
    created = 0
    loop = asyncio.get_running_loop()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        chunks = [c async for c in chain.astream(chain_input("", [], "hi"), {"callbacks": [runs]})]
    finally:
        loop.set_task_factory(None)
    assert "".join(chunks) == reply and len(chunks) >= words_in_reply
    return reply, created, runs.events


async def test_a_streamed_reply_takes_no_task_per_chunk_and_still_reports_its_run() -> None:
    """langchain-core's sequence awaits each chunk in a task of its own; the app's chain
    hands chunks on in the caller's task (bench/stream_cpu.py), its run still reported."""
    _, short_tasks, _ = await streamed_with_tasks(10)
    reply, long_tasks, events = await streamed_with_tasks(60)
    assert long_tasks == short_tasks < 10, (short_tasks, long_tasks)  # the prompt's steps
    assert events == [("start", "Chain"), ("end", reply)]


async def test_a_chain_stopped_or_failing_midway_reports_its_run_ended_so() -> None:
    runs = ChainRuns()
    chain = recording_chain("one two three four")
    stream = chain.astream(chain_input("", [], "hi"), {"callbacks": [runs]})
    assert await anext(stream) == "one"
    await stream.aclose()  # Stop
    assert runs.events == [("start", "Chain"), ("error", "GeneratorExit")]

    class Failing(GenericFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            raise RuntimeError("the model broke")

    runs = ChainRuns()
    failing = build_chain(
        Failing(messages=iter([])), context_tokens=1000, reply_tokens=10, count=words
    )
    with pytest.raises(RuntimeError, match="the model broke"):
        async for _ in failing.astream(chain_input("", [], "hi"), {"callbacks": [runs]}):
            pass
    assert runs.events == [("start", "Chain"), ("error", "RuntimeError")]


async def test_a_message_longer_than_the_whole_context_is_told_what_can_help() -> None:
    """No "Max new tokens" can make room: the message (with the system prompt) is longer
    than the whole context. The user is told to shorten it, or choose a longer context."""
    chain = recording_chain(context_tokens=20, reply_tokens=5)
    with pytest.raises(ContextOverflow) as refused:
        await chain.ainvoke(chain_input("be brief", [], "w " * 30))
    said = describe(refused.value, "en")
    assert "34 tokens" in said and "20" in said, said  # the prompt (3 + 31 by `words`); the context
    assert "Max new tokens" not in said and "shorten" in said.lower() and "longer context" in said
    for lang, slider in (("zh-TW", "最多新詞元數"), ("zh-CN", "最多新词元数")):
        said = describe(refused.value, lang)
        assert "34" in said and "20" in said and slider not in said, said


async def test_a_message_that_fits_with_a_shorter_reply_is_told_how_short() -> None:
    chain = recording_chain(context_tokens=20, reply_tokens=10)
    with pytest.raises(ContextOverflow) as refused:
        await chain.ainvoke(chain_input("be brief", [], "w " * 11))  # 15 tokens: 5 for a reply
    said = describe(refused.value, "en")
    assert "“Max new tokens” to 5 or less" in said, said
    assert "最多新詞元數」調到 5" in describe(refused.value, "zh-TW")
