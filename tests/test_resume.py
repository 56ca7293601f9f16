"""Users resuming past threads: everything said is stored as it happens, and a reopened
thread brings back its messages, the model's memory of them, and the sliders."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import chainlit as cl
import pytest
from chainlit.user import User
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from chatllm.chat import ChatApp
from chatllm.config import Settings
from chatllm.receipts import prompt_digest
from tests.conftest import sqlite_only
from tests.support import (
    LONG_SETTINGS,
    LONG_STORY,
    BrowserTab,
    Endpoint,
    WireTap,
    database_files,
    live_session,
    press_stop,
    refuse_inserts,
)


async def close_tab(app: ChatApp, tab: BrowserTab) -> None:
    """What Chainlit does when the browser disconnects (`persist_user_session`, which
    writes through the data layer app.py registers: here, the app's store)."""
    await app.store.update_thread(tab.session.thread_id, metadata=tab.session.to_persistable())


@pytest.fixture
async def app(
    tmp_path: Path, database_url: str, endpoint: Endpoint, tap: WireTap
) -> AsyncIterator[ChatApp]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tmp_path,
        database_url=database_url,
        openai_base_url=tap.base_url,
        openai_api_key=endpoint.api_key,
        openai_models=[endpoint.alias],
    )
    chat = ChatApp(settings)
    await chat.prepare("127.0.0.1")
    yield chat
    await chat.store.close()


ENDPOINT = "openai:smollm2"


async def new_chat(app: ChatApp, profile: str | None = None) -> BrowserTab:
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


async def stored(app: ChatApp, thread_id: str) -> list[tuple[str, str]]:
    rows = await app.store.db.rows(
        "SELECT type, output FROM steps WHERE thread_id = :id AND type LIKE '%message'"
        " ORDER BY created_at, seq",
        {"id": thread_id},
    )
    return [(kind, text) for kind, text in rows]


async def test_the_users_message_is_stored_before_the_model_runs(
    app: ChatApp, tap: WireTap
) -> None:
    tab = await new_chat(app, profile=ENDPOINT)
    seen_in_db: list[list[tuple[str, str]]] = []
    loop = asyncio.get_running_loop()

    def read_now(_: object) -> None:  # in the tap's thread, while the app's loop waits
        reading = asyncio.run_coroutine_threadsafe(stored(app, tab.session.thread_id), loop)
        seen_in_db.append(reading.result(timeout=30))

    tap.on_request = read_now
    await app.update_settings({"max_tokens": 6, "temperature": 0.0})
    await say(app, tab, "Is my message safe?")
    # What the database held when the request reached the model's server.
    assert seen_in_db[-1] == [("user_message", "Is my message safe?")]
    (reply,) = [m for m in tab.messages() if m["type"] == "assistant_message"]
    # Chainlit's own writes run as tasks: the reply is stored as well, soon after.
    for _ in range(3000):
        if len(await stored(app, tab.session.thread_id)) == 2:
            break
        await asyncio.sleep(0.02)
    assert await stored(app, tab.session.thread_id) == [
        ("user_message", "Is my message safe?"),
        ("assistant_message", reply["output"]),
    ]


async def test_a_reopened_thread_brings_back_messages_memory_sliders_and_model(
    app: ChatApp,
) -> None:
    tab = await new_chat(app, profile=ENDPOINT)
    await app.update_settings({"temperature": 0.4, "top_p": 0.5, "seed": "7", "max_tokens": 12})
    await say(app, tab, "I am Ada.")
    await app.update_settings({"temperature": 1.1})  # after the first message: saved now
    await say(app, tab, "Who am I?")
    first, second = [m["output"] for m in tab.messages() if m["type"] == "assistant_message"]

    again = await reopen(app, tab)
    assert again.session.chat_profile == ENDPOINT
    assert live_session().history == [
        HumanMessage("I am Ada."),
        AIMessage(first),
        HumanMessage("Who am I?"),
        AIMessage(second),
    ]
    sampling = live_session().sampling
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (1.1, 0.5, 7)
    (panel,) = again.panels()  # the settings button is back
    assert {w["id"]: w["initial"] for w in panel}["temperature"] == 1.1

    await say(app, again, "And now?")
    (last,) = [m for m in again.messages() if m["type"] == "assistant_message"]
    # The model received the reopened conversation, then the new message.
    received = [
        SystemMessage(app.settings.system_prompt),
        HumanMessage("I am Ada."),
        AIMessage(first),
        HumanMessage("Who am I?"),
        AIMessage(second),
        HumanMessage("And now?"),
    ]
    assert last["metadata"]["receipt"]["prompt_digest"] == prompt_digest(received)
    assert last["metadata"]["receipt"]["sampling"]["temperature"] == 1.1


async def test_a_stopped_reply_is_kept_marked_and_remembered(app: ChatApp) -> None:
    tab = await new_chat(app, profile=None)  # the real local model
    await app.update_settings(LONG_SETTINGS)
    tab.on_tokens = (5, press_stop)  # Stop, once five tokens are shown
    with pytest.raises(asyncio.CancelledError):
        await say(app, tab, LONG_STORY)
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    (reply,) = [s for s in thread["steps"] if s["type"] == "assistant_message"]
    assert reply["metadata"]["finish_reason"] == "cancelled"
    assert reply["output"].strip()
    await reopen(app, tab)
    history = live_session().history
    assert [m.type for m in history] == ["human", "ai"]
    assert history[1].text == reply["output"]


async def test_a_reply_whose_receipt_cannot_be_stored_is_remembered_and_the_user_told(
    app: ChatApp,
) -> None:
    tab = await new_chat(app, profile=ENDPOINT)
    await app.update_settings({"max_tokens": 6, "temperature": 0.0})
    await refuse_inserts(app.store.db, "elements")  # the disk refuses elements
    await say(app, tab, "Name a colour.")
    (error,) = tab.errors()
    assert "Shown but not saved" in error and "could not be saved (disk full)" in error
    assert "INSERT" not in error  # the driver's reason, not the SQL
    (reply,) = [m for m in tab.messages() if m["type"] == "assistant_message" and not m["isError"]]
    history = live_session().history
    assert [m.type for m in history] == ["human", "ai"]  # the model remembers it
    assert history[1].text == reply["output"]
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None  # and the reply's words are stored, without their receipt
    stored = [s["output"] for s in thread["steps"] if s["type"] == "assistant_message"]
    assert stored == [reply["output"]] and not thread["elements"]


@sqlite_only
async def test_a_message_that_cannot_be_stored_is_not_answered(
    app: ChatApp, tap: WireTap, tmp_path: Path
) -> None:
    tab = await new_chat(app, profile=ENDPOINT)
    await app.store.close()
    from chatllm.store import Database

    db = tmp_path / "chatllm.db"
    app.store.db = Database(f"sqlite+aiosqlite:///file:{db}?mode=ro&uri=true")
    await say(app, tab, "Will this be lost?")
    assert tap.chat_requests() == []  # the model was never asked
    (error,) = tab.errors()
    assert "Not saved, so not sent to the model" in error and "could not be saved" in error


async def test_the_endpoint_key_and_session_secrets_never_reach_the_database(
    app: ChatApp, endpoint: Endpoint, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    tab = await new_chat(app, profile=ENDPOINT)
    tab.session.user_env = {"OPENAI_API_KEY": "sk-user-env-secret"}
    cl.user_session.set("api_key", "sk-session-secret")
    await app.update_settings({"max_tokens": 4})
    await say(app, tab, "hello")
    assert [m for m in tab.messages() if m["type"] == "assistant_message"]  # it was answered
    # What Chainlit writes when the browser disconnects.
    await close_tab(app, tab)
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    saved = thread["metadata"] or {}
    assert not [key for key in saved if key.startswith("chatllm.")]  # live state stays live
    assert saved["chat_settings"]["temperature"] == 0.7
    await app.store.close()
    url = app.settings.database
    postgres = request.getfixturevalue("postgres") if "postgresql" in url else None
    files = database_files(url, tmp_path, postgres)
    assert any(b"hello" in f.read_bytes() for f in files)  # the files that hold the chat
    for file in files:
        data = file.read_bytes()
        assert b"sk-user-env-secret" not in data and b"sk-session-secret" not in data
        assert endpoint.api_key.encode() not in data  # the configured endpoint key


async def test_the_settings_saved_when_the_tab_closes_are_those_replies_use(
    app: ChatApp,
) -> None:
    tab = await new_chat(app, profile=ENDPOINT)

    async def submit(values: dict[str, object]) -> None:
        """The panel submitted, as Chainlit handles it: its copy first, then the hook."""
        tab.session.chat_settings.update(values)
        await app.update_settings(values)

    await submit({"max_tokens": 4, "temperature": 0.3, "bogus": "x"})
    await say(app, tab, "hello")
    await submit({"temperature": 9.5})  # refused: out of range
    assert "Temperature must be a number from 0 to 2" in tab.errors()[-1]
    await close_tab(app, tab)
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    saved = (thread["metadata"] or {})["chat_settings"]
    assert saved["temperature"] == 0.3 and saved["max_tokens"] == 4
    assert not {"bogus", "save_preset", "delete_preset"} & set(saved)


async def test_each_stored_reply_says_what_made_it(app: ChatApp) -> None:
    tab = await new_chat(app)  # the local model
    await app.update_settings({"temperature": 0.4, "top_p": 0.5, "max_tokens": 6})
    await say(app, tab, "one")
    await say(app, tab, "two")
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    first, second = [
        s["metadata"]["receipt"] for s in thread["steps"] if s["type"] == "assistant_message"
    ]
    assert (first["backend"], first["model"]) == ("local", app.settings.local_model_name)
    assert first["completion_tokens"] <= 6 and not first["tokens_estimated"]
    assert first["sampling"]["temperature"] == 0.4 and first["sampling"]["top_p"] == 0.5
    assert isinstance(first["sampling"]["seed"], int)  # the seed drawn for it, recorded
    assert first["sampling"]["seed"] != second["sampling"]["seed"]
    assert first["prompt_messages"] == 2  # system + "one"
    assert second["prompt_messages"] == 4  # system + one, first + "two"
