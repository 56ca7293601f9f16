"""A chat on an endpoint profile, through the app's hooks, against a real OpenAI-compatible
server on loopback (llama-cpp-python's), seen through a wire tap where the server must
misbehave."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import chainlit as cl
import pytest
from pydantic import SecretStr

from chatllm.chat import ChatApp
from chatllm.config import Settings
from tests.support import BrowserTab, Endpoint, WireTap, live_session, open_chat, say, until


def replies(tab: BrowserTab) -> list[dict[str, object]]:
    return [m for m in tab.messages() if m["type"] == "assistant_message" and not m["isError"]]


@pytest.fixture
async def direct(endpoint: Endpoint, endpoint_settings: Settings) -> ChatApp:
    """The app on the endpoint itself (the tap hands replies back whole, not streamed)."""
    chat = ChatApp(endpoint_settings.model_copy(update={"openai_models": [endpoint.alias]}))
    await chat.prepare("127.0.0.1")
    return chat


@pytest.fixture
async def app(endpoint: Endpoint, endpoint_settings: Settings, tap: WireTap) -> ChatApp:
    # The models offered are the endpoint's own /v1/models, through the tap.
    settings = endpoint_settings.model_copy(update={"openai_base_url": tap.base_url})
    chat = ChatApp(settings)
    await chat.prepare("127.0.0.1")
    return chat


async def test_an_endpoint_chat_streams_and_its_receipt_says_the_counts_are_estimates(
    direct: ChatApp, endpoint: Endpoint
) -> None:
    app = direct
    tab = BrowserTab(chat_profile=f"openai:{endpoint.alias}")
    await open_chat(app, tab)
    await app.update_settings({"max_tokens": 24, "temperature": 0.0, "seed": "5"})
    await say(app, tab, "What is a lighthouse?")
    assert len(tab.tokens()) > 3  # streamed in pieces
    (reply,) = replies(tab)
    receipt = reply["metadata"]["receipt"]  # type: ignore[index]
    assert (receipt["backend"], receipt["model"], receipt["sampling"]["seed"]) == (
        "openai",
        endpoint.alias,
        5,
    )
    # llama-cpp-python's server sends no token usage while streaming: estimated, and said so.
    assert receipt["tokens_estimated"] is True
    assert receipt["completion_tokens"] > 0 and receipt["prompt_tokens"] > 0
    assert receipt["finish_reason"] == "length"
    assert live_session().history[-1].text == reply["output"]


async def test_stopping_an_endpoint_reply_keeps_what_was_written(
    direct: ChatApp, endpoint: Endpoint
) -> None:
    app = direct
    tab = BrowserTab(chat_profile=f"openai:{endpoint.alias}")
    await open_chat(app, tab)
    await app.update_settings({"max_tokens": 1000, "temperature": 0.9, "seed": "7"})
    task = asyncio.create_task(say(app, tab, "Write a very long story about the sea."))
    await until(lambda: len(tab.tokens()) >= 3, what="the reply to start")
    assert endpoint.process is not None
    server = endpoint.process.pid
    os.kill(server, signal.SIGSTOP)  # still mid-reply when the stop comes, however busy
    try:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        os.kill(server, signal.SIGCONT)
    (partial,) = replies(tab)
    assert partial["output"] and partial["metadata"]["finish_reason"] == "cancelled"  # type: ignore[index]
    tab.enter()
    assert [m.type for m in live_session().history] == ["human", "ai"]


@pytest.mark.parametrize(
    ("trouble", "words"),
    [
        ("timeout", "秒内没有响应"),
        ("401", "拒绝了 API 密钥（HTTP 401）"),
        ("403", "拒绝了 API 密钥（HTTP 403）"),
        ("unknown model", "没有提供模型 'ghost'"),
    ],
)
async def test_endpoint_failures_are_told_in_the_users_language_without_the_key(
    app: ChatApp,
    endpoint: Endpoint,
    tap: WireTap,
    trouble: str,
    words: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "ghost": a model the endpoint does not serve (say, a resumed thread's, since removed)
    model = "ghost" if trouble == "unknown model" else endpoint.alias
    if trouble == "timeout":
        app.settings = app.settings.model_copy(update={"openai_timeout": 0.5})
        app.backends = type(app.backends)(app.settings)
        tap.hold_seconds = 60
    elif trouble in ("401", "403"):
        tap.fail_next, tap.fail_status = 1, int(trouble)
    tab = BrowserTab(language="zh-CN", chat_profile=f"openai:{model}")
    caplog.set_level(logging.DEBUG)
    try:
        await open_chat(app, tab)
        await say(app, tab, "你好")
    finally:
        tap.released.set()
    (error,) = tab.errors()
    assert words in error
    key = app.settings.openai_api_key.get_secret_value()
    assert key and key not in error
    assert all(key not in str(message) for message in tab.events)
    assert key not in caplog.text
    assert isinstance(app.settings.openai_api_key, SecretStr)
    assert replies(tab) == []


async def test_compare_on_an_endpoint_sends_every_set_at_once(
    app: ChatApp, endpoint: Endpoint, tap: WireTap
) -> None:
    tab = BrowserTab(chat_profile=f"openai:{endpoint.alias}")
    await open_chat(app, tab)
    await app.update_settings(
        {"max_tokens": 12, "compare_with": ["builtin:code", "builtin:creative"]}
    )
    tab.session.has_first_interaction = True
    message = cl.Message(content="Name a colour.", author="User", type="user_message")
    message.command = "Compare"
    await app.answer(message)
    assert len(tap.chat_requests()) == 3
    # All three were with the server at once (it answers one at a time; they waited there).
    assert tap.most_in_flight == 3
    temperatures = sorted(r.json()["temperature"] for r in tap.chat_requests())
    assert temperatures == [0.4, 0.7, 1.1]
    assert len({r.json()["seed"] for r in tap.chat_requests()}) == 1  # one seed for all
