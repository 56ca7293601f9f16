"""Users resuming past threads: everything said is stored as it happens, and a reopened
thread brings back its messages, the model's memory of them, and the sliders."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import chainlit as cl
import pytest
from chainlit.socket import persist_user_session
from chainlit.user import User
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from chatllm.config import Settings
from chatllm.models import BACKENDS
from chatllm.ui import HISTORY, SAMPLING, ChatApp
from tests.support import BrowserTab, ScriptedBackend, until


@pytest.fixture
def scripted() -> Iterator[type[ScriptedBackend]]:
    BACKENDS[ScriptedBackend.kind] = ScriptedBackend
    ScriptedBackend.replies = []
    ScriptedBackend.before_reply = None
    yield ScriptedBackend
    del BACKENDS[ScriptedBackend.kind]


@pytest.fixture
async def app(tmp_path: Path, scripted: type[ScriptedBackend]) -> AsyncIterator[ChatApp]:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    chat = ChatApp(settings)
    await chat.prepare("127.0.0.1")
    yield chat
    await chat.store.close()


async def new_chat(app: ChatApp, profile: str | None = "scripted:script") -> BrowserTab:
    """A signed-in user's tab with a new chat open."""
    tab = BrowserTab(chat_profile=profile)
    user = await app.store.create_user(User(identifier="ada"))
    assert user is not None
    tab.session.user = user
    tab.enter()
    await app.start()
    return tab


async def say(app: ChatApp, tab: BrowserTab, text: str) -> None:
    """What Chainlit does with a message from the browser, then the app's turn."""
    tab.enter()
    tab.session.has_first_interaction = True
    message = cl.Message(content=text, author="User", type="user_message")
    await app.answer(message)


async def reopen(app: ChatApp, old: BrowserTab) -> BrowserTab:
    """A new tab resuming `old`'s thread, as Chainlit's resume does."""
    thread = await app.store.get_thread(old.session.thread_id)
    assert thread is not None
    tab = BrowserTab(chat_profile=(thread["metadata"] or {}).get("chat_profile"))
    tab.session.user = old.session.user
    tab.session.thread_id = old.session.thread_id
    tab.enter()
    await app.resume(thread)
    return tab


def stored(app: ChatApp, thread_id: str) -> list[tuple[str, str]]:
    with sqlite3.connect(app.settings.data_dir / "chatllm.db") as raw:
        rows = raw.execute(
            "SELECT type, output FROM steps WHERE thread_id = ? AND type LIKE '%message'"
            " ORDER BY created_at, seq",
            (thread_id,),
        ).fetchall()
    return [(kind, text) for kind, text in rows]


async def test_the_users_message_is_stored_before_the_model_runs(
    app: ChatApp, scripted: type[ScriptedBackend]
) -> None:
    tab = await new_chat(app)
    seen_in_db: list[list[tuple[str, str]]] = []
    scripted.replies = ["Stored first."]
    scripted.before_reply = lambda _: seen_in_db.append(stored(app, tab.session.thread_id))
    await say(app, tab, "Is my message safe?")
    assert seen_in_db == [[("user_message", "Is my message safe?")]]
    # Chainlit's own writes run as tasks: the reply is stored as well, soon after.
    await until(lambda: len(stored(app, tab.session.thread_id)) == 2, what="the reply stored")
    assert stored(app, tab.session.thread_id) == [
        ("user_message", "Is my message safe?"),
        ("assistant_message", "Stored first."),
    ]


async def test_a_reopened_thread_brings_back_messages_memory_sliders_and_model(
    app: ChatApp, scripted: type[ScriptedBackend]
) -> None:
    tab = await new_chat(app)
    await app.update_settings({"temperature": 0.4, "top_p": 0.5, "seed": "7"})
    scripted.replies = ["Nice to meet you, Ada.", "You are Ada."]
    await say(app, tab, "I am Ada.")
    await app.update_settings({"temperature": 1.1})  # after the first message: saved now
    await say(app, tab, "Who am I?")

    again = await reopen(app, tab)
    assert again.session.chat_profile == "scripted:script"
    assert cl.user_session.get(HISTORY) == [
        HumanMessage("I am Ada."),
        AIMessage("Nice to meet you, Ada."),
        HumanMessage("Who am I?"),
        AIMessage("You are Ada."),
    ]
    sampling = cl.user_session.get(SAMPLING)
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (1.1, 0.5, 7)
    (panel,) = again.payloads("chat_settings")  # the settings button is back
    assert {w["id"]: w["initial"] for w in panel}["temperature"] == 1.1

    received: list[list[BaseMessage]] = []
    scripted.replies = ["Still Ada."]
    scripted.before_reply = received.append
    await say(app, again, "And now?")
    assert [m.text for m in received[0][1:]] == [
        "I am Ada.",
        "Nice to meet you, Ada.",
        "Who am I?",
        "You are Ada.",
        "And now?",
    ]


async def test_a_stopped_reply_is_kept_marked_and_remembered(app: ChatApp) -> None:
    tab = await new_chat(app, profile=None)  # the real local model
    await app.update_settings({"max_tokens": 2000, "temperature": 0.9})
    task = asyncio.create_task(say(app, tab, "Write a very long story about the sea."))
    await until(lambda: len(tab.tokens()) >= 5, what="the reply to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    (reply,) = [s for s in thread["steps"] if s["type"] == "assistant_message"]
    assert reply["metadata"]["finish_reason"] == "cancelled"
    assert reply["output"].strip()
    await reopen(app, tab)
    history = cl.user_session.get(HISTORY)
    assert [m.type for m in history] == ["human", "ai"]
    assert history[1].text == reply["output"]


async def test_a_message_that_cannot_be_stored_is_not_answered(
    app: ChatApp, scripted: type[ScriptedBackend], tmp_path: Path
) -> None:
    tab = await new_chat(app)
    await app.store.close()
    from chatllm.store import Database

    db = tmp_path / "chatllm.db"
    app.store.db = Database(f"sqlite+aiosqlite:///file:{db}?mode=ro&uri=true")
    called: list[object] = []
    scripted.replies = ["should not happen"]
    scripted.before_reply = called.append
    await say(app, tab, "Will this be lost?")
    assert called == []
    (error,) = tab.errors()
    assert "Not saved, so not sent to the model" in error and "could not be saved" in error


async def test_the_endpoint_key_and_session_secrets_never_reach_the_database(
    app: ChatApp, scripted: type[ScriptedBackend], tmp_path: Path
) -> None:
    tab = await new_chat(app)
    tab.session.user_env = {"OPENAI_API_KEY": "sk-user-env-secret"}
    cl.user_session.set("api_key", "sk-session-secret")
    scripted.replies = ["ok"]
    await say(app, tab, "hello")
    # What Chainlit writes when the browser disconnects.
    await persist_user_session(tab.session.thread_id, tab.session.to_persistable())
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    saved = thread["metadata"] or {}
    assert not [key for key in saved if key.startswith("chatllm.")]  # live state stays live
    assert saved["chat_settings"]["temperature"] == 0.7
    await app.store.close()
    for file in tmp_path.glob("chatllm.db*"):
        data = file.read_bytes()
        assert b"sk-user-env-secret" not in data and b"sk-session-secret" not in data


async def test_each_stored_reply_says_what_made_it(
    app: ChatApp, scripted: type[ScriptedBackend]
) -> None:
    tab = await new_chat(app)
    await app.update_settings({"temperature": 0.4, "top_p": 0.5, "max_tokens": 64})
    scripted.replies = ["first", "second"]
    await say(app, tab, "one")
    await say(app, tab, "two")
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    first, second = [
        s["metadata"]["receipt"] for s in thread["steps"] if s["type"] == "assistant_message"
    ]
    assert (first["backend"], first["model"]) == ("scripted", "script")
    assert first["sampling"]["temperature"] == 0.4 and first["sampling"]["top_p"] == 0.5
    assert isinstance(first["sampling"]["seed"], int)  # the seed drawn for it, recorded
    assert first["sampling"]["seed"] != second["sampling"]["seed"]
    assert first["prompt_messages"] == 2  # system + "one"
    assert second["prompt_messages"] == 4  # system + one, first + "two"
