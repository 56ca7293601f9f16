"""What a person sees in the chat, through the same hooks the Chainlit server calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from chatllm.chat import ChatApp
from chatllm.config import Settings
from chatllm.engine.client import local_engine
from chatllm.receipts import prompt_digest
from tests.support import (
    LONG_SETTINGS,
    LONG_STORY,
    BrowserTab,
    freeze,
    live_session,
    open_chat,
    press_stop,
    say,
    thaw,
    until,
)


async def test_a_new_chat_shows_the_sliders_first_and_presets_on_a_tab_of_their_own(
    app: ChatApp,
) -> None:
    tab = BrowserTab()
    await open_chat(app, tab)
    (panel,) = tab.payloads("chat_settings")
    assert [(t["id"], t["label"]) for t in panel] == [
        ("sampling", "Sampling"),  # the tab the panel opens on
        ("advanced", "Advanced"),
        ("presets", "Presets"),
    ]
    sampling, advanced, presets = ([w["id"] for w in t["inputs"]] for t in panel)
    assert advanced == [
        "typical_p",
        "presence_penalty",
        "frequency_penalty",
        "mirostat_mode",
        "mirostat_tau",
        "mirostat_eta",
    ]
    assert sampling == [
        "temperature",
        "top_p",
        "min_p",
        "max_tokens",
        "top_k",
        "repeat_penalty",
        "seed",
        "system_prompt",
    ]
    assert presets == ["preset", "save_preset", "compare_with"]  # no switch that deletes
    temperature = panel[0]["inputs"][0]
    assert temperature["type"] == "slider"
    assert (temperature["min"], temperature["max"]) == (0.0, 2.0)


async def test_a_reply_streams_into_the_chat_and_is_remembered(app: ChatApp) -> None:
    tab = BrowserTab()
    await open_chat(app, tab)
    await app.update_settings({"max_tokens": 24, "temperature": 0.0})
    await say(app, tab, "What is a lighthouse?")
    assert len(tab.tokens()) > 3
    (reply,) = [m for m in tab.messages() if m["type"] == "assistant_message"]
    assert reply["output"].strip()
    assert reply["output"] == "".join([tab.payloads("stream_start")[0]["output"], *tab.tokens()])
    assert reply["metadata"]["finish_reason"] == "length"  # 24 tokens cut the answer short
    history = live_session().history
    assert history == [HumanMessage("What is a lighthouse?"), AIMessage(reply["output"])]


async def test_slider_changes_apply_to_the_next_reply(app: ChatApp) -> None:
    tab = BrowserTab()
    await open_chat(app, tab)
    await app.update_settings({"temperature": 0.4, "top_p": 0.5, "max_tokens": 3, "seed": "9"})
    sampling = live_session().sampling
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (0.4, 0.5, 9)
    await say(app, tab, "Tell me a story.")
    (reply,) = [m for m in tab.messages() if m["type"] == "assistant_message"]
    assert reply["metadata"]["finish_reason"] == "length"
    assert app.backends.get("local").count_tokens([AIMessage(reply["output"])]) <= 3 + 8


async def test_a_bad_slider_value_is_refused_and_the_old_values_kept(app: ChatApp) -> None:
    tab = BrowserTab(language="zh-TW")
    await open_chat(app, tab)
    await app.update_settings({"temperature": 0.3})
    await app.update_settings({"temperature": "9000", "top_p": 0.2})
    sampling = live_session().sampling
    assert (sampling.temperature, sampling.top_p) == (0.3, 0.95)  # nothing of it applied
    (error,) = tab.errors()
    assert "溫度必須是 0 到 2 之間的數字" in error and "設定未套用" in error
    restored = tab.panels()[-1]
    assert {w["id"]: w["initial"] for w in restored}["temperature"] == 0.3
    assert tab.session.chat_settings["temperature"] == 0.3  # Chainlit's copy is put back


async def test_follow_up_questions_carry_the_conversation(app: ChatApp) -> None:
    tab = BrowserTab()
    await open_chat(app, tab)
    await app.update_settings({"max_tokens": 8, "temperature": 0.0})
    await say(app, tab, "My name is Ada.")
    await say(app, tab, "What is my name?")
    history = live_session().history
    assert [m.type for m in history] == ["human", "ai", "human", "ai"]
    assert history[0].text == "My name is Ada."
    # What the model received for the follow-up: the first exchange, then the question.
    first, second = [m for m in tab.messages() if m["type"] == "assistant_message"]
    received = [
        SystemMessage(app.settings.system_prompt),
        HumanMessage("My name is Ada."),
        AIMessage(first["output"]),
        HumanMessage("What is my name?"),
    ]
    receipt = second["metadata"]["receipt"]
    assert receipt["prompt_messages"] == 4
    assert receipt["prompt_digest"] == prompt_digest(received)


async def test_stop_keeps_the_partial_reply_and_frees_the_model(app: ChatApp) -> None:
    tab = BrowserTab()
    await open_chat(app, tab)
    await app.update_settings(LONG_SETTINGS)
    tab.on_tokens = (5, press_stop)  # Stop, once five tokens are shown
    with pytest.raises(asyncio.CancelledError):
        await say(app, tab, LONG_STORY)
    tab.enter()
    history = live_session().history
    assert [m.type for m in history] == ["human", "ai"]
    (partial,) = [m for m in tab.messages() if m["type"] == "assistant_message"]
    assert partial["metadata"]["finish_reason"] == "cancelled"
    assert partial["output"] == history[1].text and partial["output"]
    # The local model counted its tokens as it went: a stopped reply's counts are exact
    # too (the prompt as llama.cpp took it, each token it sampled), not estimated.
    receipt = partial["metadata"]["receipt"]
    assert not receipt["tokens_estimated"]
    assert receipt["prompt_tokens"] > 20 and 5 <= receipt["completion_tokens"] < 100
    await app.update_settings({"max_tokens": 5})
    await say(app, tab, "Hi")
    assert len(live_session().history) == 4


async def test_a_second_user_sees_they_are_queued(app: ChatApp) -> None:
    first, second = BrowserTab(), BrowserTab(language="zh-CN")
    for tab in (first, second):
        await open_chat(app, tab)
        await app.update_settings({"max_tokens": 40, "temperature": 0.0})

    first.enter()
    await app.update_settings(LONG_SETTINGS)
    engine = local_engine(app.settings)
    # Counted before the freeze below (the engine counts tokens too), as any earlier turn
    # of the second user's would have.
    await engine.prepare_counts([app.settings.system_prompt, "Tell me about the moon."])
    # The first's reply holds the model: its engine frozen mid-reply, however busy the machine.
    first.on_tokens = (3, lambda: freeze(engine.process.pid))
    ahead = asyncio.create_task(say(app, first, LONG_STORY))
    await until(lambda: first.on_tokens is None, what="the first reply to start")
    behind = asyncio.create_task(say(app, second, "Tell me about the moon."))

    def notices() -> list[dict[str, Any]]:
        return [m for m in second.payloads("new_message") if "前面还有 1 个请求" in m["output"]]

    await until(notices, what="the queue notice")  # the first still holds the model
    assert not second.tokens()
    ahead.cancel()  # the first user stops; the second's reply starts
    thaw(engine.process.pid)
    with pytest.raises(asyncio.CancelledError):
        await ahead
    await behind
    assert len(notices()) == 1
    assert second.payloads("delete_message")[0]["id"] == notices()[0]["id"]  # gone at its start
    for tab in (first, second):
        replies = [m for m in tab.messages() if m["type"] == "assistant_message"]
        assert len(replies) == 1 and replies[0]["output"].strip()
    # The wait in line is on the second reply's receipt, apart from its time to first token.
    (waited,) = [m for m in second.messages() if m["type"] == "assistant_message"]
    receipt = waited["metadata"]["receipt"]
    assert receipt["queued_ms"] > 0 and receipt["ttft_ms"] > 0


async def test_an_unreachable_endpoint_is_a_plain_chat_message(settings: Settings) -> None:
    from tests.support import free_port

    dead = settings.model_copy(
        update={
            "openai_base_url": f"http://127.0.0.1:{free_port()}/v1",
            "openai_models": ["remote-model"],
            "openai_max_retries": 0,
        }
    )
    app = ChatApp(dead)
    await app.prepare("127.0.0.1")
    tab = BrowserTab(chat_profile="openai:remote-model")
    await open_chat(app, tab)
    await say(app, tab, "Hello?")
    (error,) = tab.errors()
    assert "Cannot reach the model endpoint" in error and dead.openai_base_url in error
    assert live_session().history == []  # no reply: nothing for the model to recall
    await say(app, tab, "Still there?")  # the app stays up and answers again
    assert len(tab.errors()) == 2


async def test_a_message_too_long_for_the_context_is_explained(app: ChatApp) -> None:
    tab = BrowserTab()
    await open_chat(app, tab)
    await say(app, tab, "word " * 5000)
    (error,) = tab.errors()
    assert "too long" in error and "tokens" in error


async def test_profiles_offer_the_local_model_first_in_the_users_language(app: ChatApp) -> None:
    (local,) = await app.profiles(None, "zh-TW")
    assert local.name == "local:SmolLM2-135M-Instruct"
    assert local.default
    assert local.display_name == "本機 · SmolLM2-135M-Instruct"


async def test_a_reply_that_ends_by_itself_is_marked_stop(app: ChatApp) -> None:
    tab = BrowserTab()
    await open_chat(app, tab)
    await app.update_settings({"max_tokens": 300, "temperature": 0.0})
    await say(app, tab, "Say hi.")
    (reply,) = [m for m in tab.messages() if m["type"] == "assistant_message"]
    assert reply["metadata"]["finish_reason"] == "stop"


async def test_a_new_chat_says_why_endpoint_models_are_missing(settings: Settings) -> None:
    from tests.support import free_port

    dead = settings.model_copy(
        update={"openai_base_url": f"http://127.0.0.1:{free_port()}/v1", "openai_timeout": 2}
    )
    app = ChatApp(dead)
    await app.prepare("127.0.0.1")
    profiles = await app.profiles(None, "en")
    assert [p.name for p in profiles] == ["local:SmolLM2-135M-Instruct"]  # local still offered
    tab = BrowserTab()
    await open_chat(app, tab)
    (notice,) = [m["output"] for m in tab.messages() if m["type"] == "assistant_message"]
    assert "not offered right now" in notice and "Cannot reach" in notice
