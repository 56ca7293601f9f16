"""The embedded SmolLM2 model through the app's real chain."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from chatllm.backends import TEMPLATE_TOKENS_PER_MESSAGE, queue_listener
from chatllm.backends.local import LocalBackend
from chatllm.chain import build_chain, chain_input
from chatllm.chat import ChatApp
from chatllm.config import Settings
from chatllm.engine.client import close_local_engine, local_engine
from chatllm.errors import ContextOverflow
from chatllm.sampling import Sampling
from tests.support import LONG_STORY, press_stop

STORY = "Write a long story about a lighthouse keeper and her cat."


def chain_for(local: LocalBackend, sampling: Sampling):  # type: ignore[no-untyped-def]
    return build_chain(
        local.chat_model(local.settings.local_model_name, sampling),
        context_tokens=local.context_tokens(""),
        reply_tokens=sampling.max_tokens,
        count=local.count_tokens,
    )


async def collect(local: LocalBackend, sampling: Sampling, message: str) -> list[str]:
    chain = chain_for(local, sampling)
    return [part async for part in chain.astream(chain_input(sampling.system_prompt, [], message))]


async def test_a_reply_streams_token_by_token(local: LocalBackend) -> None:
    parts = await collect(local, Sampling(max_tokens=40, temperature=0.0), "Say hello.")
    assert len(parts) > 5
    assert "".join(parts).strip()


async def test_chinese_in_and_out(local: LocalBackend) -> None:
    parts = await collect(local, Sampling(max_tokens=30, temperature=0.0), "用中文說你好。")
    text = "".join(parts)
    assert text.strip()
    assert "\ufffd" not in text  # multi-byte characters are never split mid-way


async def test_the_same_seed_gives_the_same_reply(local: LocalBackend) -> None:
    sampling = Sampling(max_tokens=40, temperature=1.2, top_p=1.0, seed=1234)
    first = "".join(await collect(local, sampling, STORY))
    await collect(local, sampling.update({"seed": 99}), STORY)  # something else in between
    second = "".join(await collect(local, sampling, STORY))
    assert first == second


async def test_an_empty_seed_draws_a_new_one_each_time(local: LocalBackend) -> None:
    sampling = Sampling(max_tokens=40, temperature=1.5, top_p=1.0)
    replies = {"".join(await collect(local, sampling, STORY)) for _ in range(3)}
    assert len(replies) > 1


async def test_the_max_tokens_slider_limits_the_reply(local: LocalBackend) -> None:
    model = local.chat_model(local.settings.local_model_name, Sampling(max_tokens=5, temperature=0))
    chunks = [chunk async for chunk in model.astream([HumanMessage(STORY)])]
    finish = [c.response_metadata["finish_reason"] for c in chunks if c.response_metadata]
    assert finish == ["length"]
    text = "".join(chunk.text for chunk in chunks)
    assert 0 < local.count_tokens([AIMessage(text)]) - TEMPLATE_TOKENS_PER_MESSAGE <= 6


async def test_two_concurrent_generations_both_complete_in_turn(local: LocalBackend) -> None:
    sampling = Sampling(max_tokens=30, temperature=0.0)
    spans: dict[str, list[float]] = {"a": [], "b": []}
    heard: dict[str, list[int]] = {"a": [], "b": []}

    async def run(name: str) -> str:
        async def listen(ahead: int) -> None:
            heard[name].append(ahead)

        queue_listener.set(listen)
        parts = []
        async for part in chain_for(local, sampling).astream(
            chain_input(sampling.system_prompt, [], STORY)
        ):
            spans[name].append(time.monotonic())
            parts.append(part)
        return "".join(parts)

    first, second = await asyncio.gather(run("a"), run("b"))
    assert first and first == second  # same prompt, greedy: neither was disturbed
    a_start, a_end = spans["a"][0], spans["a"][-1]
    b_start, b_end = spans["b"][0], spans["b"][-1]
    assert a_end < b_start or b_end < a_start  # one after the other, never interleaved
    waited = heard["a"] or heard["b"]
    assert waited == [1, 0]  # the second heard it was queued behind one, then its start


async def test_stopping_a_generation_frees_the_model(local: LocalBackend) -> None:
    sampling = Sampling(max_tokens=2000, temperature=0.9, seed=7)  # a 466-token story
    received: list[str] = []

    async def long_reply() -> None:
        async for part in chain_for(local, sampling).astream(
            chain_input(sampling.system_prompt, [], LONG_STORY)
        ):
            received.append(part)
            if len(received) == 5:
                press_stop()  # from within the reply's own task, at exactly this point

    local.engine.start()
    engine = local.engine.process
    before = engine.generated
    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(long_reply())
    stopped_at = len(received)
    assert stopped_at < 100
    parts = await collect(local, Sampling(max_tokens=10, temperature=0.0), "Say hi.")
    assert parts
    # The model went on to this reply after a few more tokens of the stopped one, not
    # after the 466 tokens that story runs to.
    assert engine.generated - before <= stopped_at + 10 + 10
    assert len(received) == stopped_at


async def test_a_reply_closed_where_nothing_can_wait_still_stops_and_frees_the_model(
    local: LocalBackend,
) -> None:
    """A reply's generator left mid-reply by a stopped consumer is closed by the garbage
    collector, sometimes where no await can run (seen in the running app, under load): the
    engine must still stop, and the line move on."""
    engine = local.engine
    engine.start()
    process = engine.process
    before = process.generated
    params = local.chat_model("", Sampling(max_tokens=2000, temperature=0.9, seed=7))._params()
    hooks = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=None, finalizer=None)  # no event loop to close it on
    try:
        reply = engine.stream([{"role": "user", "content": LONG_STORY}], params)
        await anext(reply)
    finally:
        sys.set_asyncgen_hooks(*hooks)
    unfinished: list[object] = []  # a cleanup abandoned half-way is reported here
    reporting, sys.unraisablehook = sys.unraisablehook, unfinished.append
    try:
        del reply  # closed at once, synchronously
        gc.collect()
    finally:
        sys.unraisablehook = reporting
    assert unfinished == []
    parts = await collect(local, Sampling(max_tokens=10, temperature=0.0), "Say hi.")
    assert parts
    # The model went on to this reply a few tokens into the 466-token story, not after it.
    assert process.generated - before <= 20 + 10
    assert engine._line == []


async def test_a_message_longer_than_the_context_is_refused_with_numbers(
    local: LocalBackend,
) -> None:
    huge = "lighthouse " * (local.context_tokens("") + 100)
    with pytest.raises(ContextOverflow) as refused:
        await collect(local, Sampling(max_tokens=100), huge)
    assert refused.value.needed is not None and refused.value.available is not None
    assert refused.value.needed > refused.value.available
    assert refused.value.available == local.context_tokens("") - 100


async def test_a_request_cancelled_while_queued_leaves_the_line_moving(
    local: LocalBackend,
) -> None:
    engine = local.engine
    release = asyncio.Event()
    heard: list[int] = []

    async def holder() -> None:
        async with engine.turn():
            await release.wait()

    async def waiter(log: list[int] | None = None) -> None:
        async def listen(ahead: int) -> None:
            if log is not None:
                log.append(ahead)

        queue_listener.set(listen)
        async with engine.turn():
            pass

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    dropped = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    last = asyncio.create_task(waiter(heard))
    await asyncio.sleep(0.05)
    assert heard == [2]
    dropped.cancel()  # a tab closed while waiting
    await asyncio.sleep(0.05)
    assert heard == [2, 1]
    release.set()
    await asyncio.wait_for(asyncio.gather(first, last), timeout=5)
    assert heard == [2, 1, 0]
    assert engine._line == []


async def test_the_line_moves_on_even_if_the_leaver_is_cancelled_again(
    local: LocalBackend,
) -> None:
    engine = local.engine
    notice_sent = asyncio.Event()
    slow_socket = asyncio.Event()

    async def holder() -> None:
        async with engine.turn():
            await asyncio.sleep(3600)

    async def waiter() -> None:
        async def listen(ahead: int) -> None:
            if ahead:
                notice_sent.set()
                await slow_socket.wait()  # a browser slow to take the queue notice

        queue_listener.set(listen)
        async with engine.turn():
            pass

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    second = asyncio.create_task(waiter())
    await notice_sent.wait()
    first.cancel()  # Stop, then Stop again while it is leaving
    await asyncio.sleep(0)
    first.cancel()
    slow_socket.set()
    await asyncio.wait_for(second, timeout=5)  # served, not stranded
    with pytest.raises(asyncio.CancelledError):
        await first
    assert engine._line == []


@pytest.fixture
def fresh_engine_settings(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings whose local engine is this test's own (a start timeout nobody else uses)."""
    own = settings.model_copy(update={"engine_start_timeout": 119.5, "data_dir": tmp_path})
    yield own
    close_local_engine(own)


async def test_the_app_makes_the_models_first_reply_before_the_first_user(
    fresh_engine_settings: Settings,
) -> None:
    """A fresh engine's first reply waited 2.4x as long for its first token as the next
    ones (bench/first_reply.py); the app makes one of one token as it starts, in the
    background: its start does not wait for it."""
    app = ChatApp(fresh_engine_settings)
    await app.prepare("127.0.0.1")
    engine = local_engine(fresh_engine_settings)
    await app.started()
    assert app._warming is not None and not app._warming.done()  # the first page goes on
    await app._warming
    assert engine.process.generated == 1  # one token, nobody's
    await app.store.close()
