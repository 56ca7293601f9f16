"""The running app over its real socket, as the browser drives it: app.py's hooks, Chainlit's
own Stop event and its session persistence, end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatllm.export import thread_document
from chatllm.markdown import to_markdown
from chatllm.store import ChatDataLayer, Database, FileStore
from chatllm.store.datalayer import APP_METADATA
from tests.support import (
    LONG_SETTINGS,
    LONG_STORY,
    ROOT,
    AppServer,
    SocketUser,
    children,
    panel_widgets,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    app = AppServer(tmp_path_factory.mktemp("socket-app")).start()
    yield app
    app.stop()


def thread_replies(thread: dict[str, object]) -> list[dict[str, object]]:
    steps = thread["steps"]
    assert isinstance(steps, list)
    return [s for s in steps if (s.get("metadata") or {}).get("kind") == "reply"]


def replies(tab: SocketUser) -> list[dict[str, object]]:
    """The model's replies (not Chainlit's own notes, such as its stop notice)."""
    return [m for m in tab.finished_replies() if (m.get("metadata") or {}).get("kind")]


async def test_stop_then_resume_brings_back_the_partial_reply_memory_and_sliders(
    server: AppServer,
) -> None:
    tab = SocketUser(server.base)
    await tab.connect()
    try:
        await tab.say(LONG_STORY, **LONG_SETTINGS)
        await tab.wait_for(lambda: len(tab.named("stream_token")) >= 3)
        assert server.process is not None
        (engine,) = children(server.process.pid)
        os.kill(engine, signal.SIGSTOP)  # still mid-reply when Stop arrives, however busy
        try:
            await tab.client.emit("stop")  # the Stop button
            await tab.wait_for(
                lambda: [m for m in tab.named("new_message") if "stopped" in str(m["output"])]
            )
        finally:
            os.kill(engine, signal.SIGCONT)
        await tab.wait_for(lambda: replies(tab))  # the partial reply, sent whole at its end
        (partial,) = replies(tab)
        assert partial["output"]
        assert partial["metadata"]["finish_reason"] == "cancelled"  # type: ignore[index]
    finally:
        await tab.client.disconnect()

    # A new page on the same thread: Chainlit resumes it from the database.
    again = SocketUser(server.base, thread_id=tab.thread_id)
    await again.connect()
    try:
        (resumed,) = again.named("resume_thread")
        (stored,) = thread_replies(resumed)
        assert stored["output"] == partial["output"]
        panel = again.named("chat_settings")[-1]["data"]
        assert isinstance(panel, list)
        values = {w["id"]: w["initial"] for w in panel_widgets(panel)}
        assert (values["max_tokens"], values["seed"]) == (2000, "7")  # the sliders came back
        await again.say("Thank you.", max_tokens=8)
        await again.wait_for(lambda: replies(again))
        (reply,) = replies(again)
        # The model remembered the stopped reply: system, the story's exchange, the thanks.
        assert reply["metadata"]["receipt"]["prompt_messages"] == 4  # type: ignore[index]
    finally:
        await again.client.disconnect()


def exported(server: AppServer, thread_id: str) -> bytes:
    """The thread as `python -m chatllm export` writes it (JSON)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLLM_")}
    done = subprocess.run(
        [sys.executable, "-m", "chatllm", "export", thread_id],
        env={**env, "CHATLLM_DATA_DIR": str(server.data_dir)},
        capture_output=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def links(tab: SocketUser) -> list[dict[str, object]]:
    """The app's messages linking to a thread (an import's result)."""
    return [m for m in tab.named("new_message") if "/thread/" in str(m["output"])]


async def import_file(server: AppServer, name: str, content: bytes, mime: str) -> SocketUser:
    """A new chat where the Import command is given and answered with an upload."""
    tab = SocketUser(server.base)
    await tab.connect()
    tab.answer_file_questions(name, content, mime)
    await tab.say("import this", command="Import")
    await tab.wait_for(lambda: tab.named("ask") and tab.named("task_end"))
    return tab


async def test_stop_is_answered_in_the_users_language(server: AppServer) -> None:
    """Chainlit's own Stop notice is English whatever the browser's language."""
    tab = SocketUser(server.base, language="zh-TW")
    await tab.connect()
    try:
        await tab.say(LONG_STORY, **LONG_SETTINGS)
        await tab.wait_for(lambda: len(tab.named("stream_token")) >= 3)
        await tab.client.emit("stop")
        await tab.wait_for(
            lambda: [m for m in tab.named("new_message") if m["output"] == "已手動停止。"]
        )
        assert not [m for m in tab.named("new_message") if "manually stopped" in str(m["output"])]
    finally:
        await tab.client.disconnect()


async def test_import_from_the_chat_takes_an_uploaded_export_as_a_new_thread(
    server: AppServer,
) -> None:
    tab = SocketUser(server.base)
    await tab.connect()
    try:
        await tab.say("Remember the word lighthouse.", max_tokens=8, temperature=0.0)
        await tab.wait_for(lambda: replies(tab))
        (original,) = replies(tab)
    finally:
        await tab.client.disconnect()
    document = exported(server, tab.thread_id)

    importer = await import_file(server, "chat.json", document, "application/json")
    try:
        await importer.wait_for(
            lambda: [m for m in importer.named("new_message") if "/thread/" in str(m["output"])]
        )
        (done,) = [m for m in importer.named("new_message") if "/thread/" in str(m["output"])]
        assert "Imported as a new conversation" in str(done["output"])
        new_id = str(done["output"]).split("/thread/")[1].rstrip(").")
        assert new_id != tab.thread_id
    finally:
        await importer.client.disconnect()

    # The new thread resumes like any other, the reply and its receipt as they were.
    again = SocketUser(server.base, thread_id=new_id)
    await again.connect()
    try:
        (resumed,) = again.named("resume_thread")
        steps = resumed["steps"]
        assert isinstance(steps, list)
        assert [s["output"] for s in steps if s["type"] == "user_message"] == [
            "Remember the word lighthouse."
        ]
        (reply,) = thread_replies(resumed)
        assert reply["output"] == original["output"]
        assert reply["metadata"]["receipt"] == original["metadata"]["receipt"]  # type: ignore[index]
    finally:
        await again.client.disconnect()


async def test_a_message_too_long_is_kept_and_the_user_told_the_socket_stays_open(
    server: AppServer,
) -> None:
    tab = SocketUser(server.base)
    await tab.connect()
    try:
        for length in (100_001, 2_000_000):  # just over the limit; twice Chainlit's socket cap
            await tab.say("x" * length)
            await tab.wait_for(lambda: any("characters" in e for e in tab.errors()))
            (error,) = tab.errors()
            assert f"{length} characters" in error and "100000" in error
            tab.events.clear()
        await tab.say("Say hi.", max_tokens=4, temperature=0.0)  # the same socket goes on
        await tab.wait_for(lambda: replies(tab))
    finally:
        await tab.client.disconnect()
    with sqlite3.connect(server.data_dir / "chatllm.db") as raw:
        kept = [
            len(text)
            for (text,) in raw.execute(
                "SELECT output FROM steps WHERE thread_id = ? AND type = 'user_message'"
                " ORDER BY seq",
                (tab.thread_id,),
            )
        ]
    assert kept == [100_001, 2_000_000, len("Say hi.")]


def test_session_folders_are_removed_only_for_this_hosts_ended_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers on several machines share one data directory: a folder whose process id is
    not running here may belong to a live process of another machine."""
    import chainlit.config
    import chainlit.server

    from chatllm.web import session_files

    for module in (chainlit.config, chainlit.server):
        monkeypatch.setattr(module, "FILES_DIRECTORY", Path(tmp_path / "unused"), raising=False)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    host = socket.gethostname()
    root = tmp_path / "session-files"
    for name in (f"{host}-{ended.pid}", f"{host}-{os.getppid()}", f"elsewhere-{ended.pid}"):
        (root / name).mkdir(parents=True)
        (root / name / "upload").write_bytes(b"an upload")
    mine = session_files(tmp_path)
    assert mine == root / f"{host}-{os.getpid()}"
    assert chainlit.config.FILES_DIRECTORY == mine
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"elsewhere-{ended.pid}", f"{host}-{os.getppid()}", mine.name]
    )


async def test_a_second_instance_stopping_leaves_the_first_ones_uploads_alone(
    server: AppServer,
) -> None:
    """Two instances on one data directory (a restart overlapping the old process, or a
    mistake): the second one's stop used to delete the first one's session files, here an
    export uploaded for import but not yet read."""
    tab = SocketUser(server.base)
    await tab.connect()
    await tab.say("Hello.", max_tokens=4, temperature=0.0)
    await tab.wait_for(lambda: replies(tab))
    content = exported(server, tab.thread_id)
    uploaded, release = asyncio.Event(), asyncio.Event()

    async def ask(data: dict[str, Any]) -> list[dict[str, str]]:
        """The page's answer to the file question, held back until the test says."""
        async with httpx.AsyncClient(cookies=tab.cookies, timeout=30) as http:
            answer = await http.post(
                server.base + "/project/file",
                params={"session_id": tab.session_id, "ask_parent_id": data["msg"]["parentId"]},
                files={"file": ("chat.json", content, "application/json")},
            )
        answer.raise_for_status()
        uploaded.set()
        await release.wait()
        return [{"id": answer.json()["id"]}]

    def held() -> list[Path]:
        places = [ROOT / ".files", server.data_dir]
        found = [p for place in places for p in place.rglob("*") if p.is_file()]
        return [p for p in found if p.read_bytes() == content]

    tab.client.on("ask", ask)
    try:
        await tab.say("import this", command="Import")
        await asyncio.wait_for(uploaded.wait(), timeout=60)
        assert held()
        second = AppServer(server.data_dir).start()
        second.stop()
        (kept,) = held()
        assert kept.is_relative_to(server.data_dir)  # beside the data, not beside app.py
        release.set()
        await tab.wait_for(
            lambda: [m for m in tab.named("new_message") if "/thread/" in str(m["output"])]
        )
    finally:
        await tab.client.disconnect()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"not json at all", "That file is not JSON"),
        (b'{"format": "something else"}', "format"),
    ],
)
async def test_an_uploaded_file_that_is_not_an_export_is_refused(
    server: AppServer, content: bytes, words: str
) -> None:
    importer = await import_file(server, "bad.json", content, "application/json")
    try:
        await importer.wait_for(importer.errors)
        (error,) = importer.errors()
        assert words in error
        assert not links(importer)
    finally:
        await importer.client.disconnect()


async def test_a_chat_turn_writes_the_message_and_the_reply_once_each(server: AppServer) -> None:
    """Chainlit writes each message in a task of its own; the app stores the user's message
    (before the model runs) and the reply (with its receipt) itself, awaited — so each is
    written once, not twice."""
    with sqlite3.connect(server.data_dir / "chatllm.db") as raw:
        raw.executescript(
            "CREATE TABLE IF NOT EXISTS step_writes (step_id TEXT, op TEXT);"
            "CREATE TRIGGER IF NOT EXISTS step_inserted AFTER INSERT ON steps"
            " BEGIN INSERT INTO step_writes VALUES (NEW.id, 'insert'); END;"
            "CREATE TRIGGER IF NOT EXISTS step_updated AFTER UPDATE ON steps"
            " BEGIN INSERT INTO step_writes VALUES (NEW.id, 'update'); END;"
        )
    tab = SocketUser(server.base)
    await tab.connect()
    try:
        asked = await tab.turn("Say hi.", max_tokens=4, temperature=0.0)
        (reply,) = replies(tab)
    finally:
        await tab.client.disconnect()
    with sqlite3.connect(server.data_dir / "chatllm.db") as raw:
        # The turn has ended: every write the app waits for is in; Chainlit's own tasks
        # (had they written these messages) were started before it.
        writes = dict(
            raw.execute(
                "SELECT step_id, count(*) FROM step_writes WHERE step_id IN (?, ?)"
                " GROUP BY step_id",
                (asked["id"], reply["id"]),
            ).fetchall()
        )
        receipts = raw.execute(
            "SELECT count(*) FROM elements WHERE step_id = ?", (reply["id"],)
        ).fetchone()
    assert writes == {asked["id"]: 1, reply["id"]: 1}
    assert receipts == (1,)


async def test_an_edit_is_a_new_message_beside_the_old_one_and_nothing_is_removed(
    server: AppServer,
) -> None:
    """Chainlit's own `edit_message` rewrites the message and deletes every step after it;
    the app's answers the edited words as a new message beside the old one, shown where it
    stood, and the next turn is answered from the path on screen alone."""
    tab = SocketUser(server.base)
    await tab.connect()
    try:
        first = await tab.turn("Say hi.", max_tokens=4, temperature=0.0)
        await tab.turn("Say bye.")
        ends = len(tab.named("task_end"))
        edited = {**first, "output": "Say something else."}
        await tab.client.emit("edit_message", {"message": {**edited, "id": "not-a-message"}})
        await tab.client.emit("edit_message", {"message": edited})
        await tab.wait_for(lambda: len(tab.named("task_end")) > ends, seconds=120)
        shown = tab.named("resume_thread")[-1]  # the page takes the new path whole
        texts = [s["output"] for s in shown["steps"] if s["type"] == "user_message"]  # type: ignore[attr-defined,index]
        assert texts == ["Say something else."]
        (switch,) = [e for e in shown["elements"] if e["name"] == "Branches"]  # type: ignore[attr-defined,index]
        assert (switch["props"]["at"], switch["props"]["of"]) == (2, 2)
        await tab.wait_for(lambda: len(replies(tab)) == 3, seconds=120)
        await tab.turn("Still here?")
    finally:
        await tab.client.disconnect()
    with sqlite3.connect(server.data_dir / "chatllm.db") as raw:
        asked = [
            text
            for (text,) in raw.execute(
                "SELECT output FROM steps WHERE thread_id = ? AND type = 'user_message'"
                " ORDER BY seq",
                (tab.thread_id,),
            )
        ]
        (answers,) = raw.execute(
            "SELECT count(*) FROM steps WHERE thread_id = ? AND type = 'assistant_message'"
            " AND metadata LIKE '%finish_reason%'",
            (tab.thread_id,),
        ).fetchone()
    # Nothing rewritten, nothing removed: the first two messages and their replies stay.
    assert asked == ["Say hi.", "Say bye.", "Say something else.", "Still here?"]
    assert answers == 4
    path = await asyncio.to_thread(active_path, server, tab.thread_id)
    assert [s["output"] for s in path if s["type"] == "user_message"] == [
        "Say something else.",
        "Still here?",
    ]
    last = [s for s in path if s["type"] == "assistant_message"][-1]
    assert last["metadata"]["receipt"]["prompt_messages"] == 4  # system, the edit, its reply, now


async def test_a_fork_leaves_the_conversation_forked_as_it_was(server: AppServer) -> None:
    """The link to the new conversation is shown in the old one, not stored there: a
    message Chainlit sends is written by its own task unless the app says otherwise."""
    tab = SocketUser(server.base)
    await tab.connect()
    try:
        await tab.turn("Say hi.", max_tokens=4, temperature=0.0)
        (reply,) = replies(tab)
        before = await asyncio.to_thread(stored_thread, server, tab.thread_id)
        action = {"name": "fork", "payload": {"step": reply["id"]}, "forId": reply["id"]}
        async with httpx.AsyncClient(cookies=tab.cookies, timeout=60) as http:
            answer = await http.post(
                server.base + "/project/action",
                json={"sessionId": tab.session_id, "action": action},
            )
        assert answer.status_code == 200
        await tab.wait_for(
            lambda: any("Forked into" in str(m.get("output")) for m in tab.named("new_message"))
        )
        await tab.turn("Still here?")  # by now Chainlit's own writes have landed
    finally:
        await tab.client.disconnect()
    after = await asyncio.to_thread(stored_thread, server, tab.thread_id)
    assert before is not None and after is not None
    had = [s["id"] for s in before["steps"] if s["type"].endswith("message")]
    kept = [s["id"] for s in after["steps"] if s["type"].endswith("message")]
    assert kept[: len(had)] == had
    assert not [s for s in after["steps"] if "Forked into" in (s.get("output") or "")]


def active_path(server: AppServer, thread_id: str) -> list[dict[str, Any]]:
    """The steps a page of the thread shows (the path to its active leaf)."""

    async def read() -> list[dict[str, Any]]:
        async with app_store(server) as layer:
            thread = await layer.get_thread(thread_id)
            assert thread is not None
            return [dict(s) for s in thread["steps"]]

    return asyncio.run(read())


@asynccontextmanager
async def app_store(server: AppServer) -> AsyncIterator[ChatDataLayer]:
    """The app's database, through a store of the test's own."""
    layer = ChatDataLayer(
        Database(f"sqlite+aiosqlite:///{server.data_dir / 'chatllm.db'}"),
        FileStore(server.data_dir / "files"),
    )
    try:
        yield layer
    finally:
        await layer.close()


def stored_thread(server: AppServer, thread_id: str) -> dict[str, Any] | None:
    """The thread as the app's database holds it now: every branch."""

    async def read() -> dict[str, Any] | None:
        async with app_store(server) as layer:
            return await layer.whole_thread(thread_id)  # type: ignore[return-value]

    return asyncio.run(read())


async def write_metadata(server: AppServer, thread_id: str, metadata: dict[str, Any]) -> None:
    """The app's own write of the thread's metadata, made from outside (as another tab, a
    button or the Share route would make it)."""
    async with app_store(server) as layer:
        await layer.save_thread_metadata(thread_id, metadata)


async def a_short_thread(server: AppServer) -> str:
    """A thread of one short turn, its tab closed again; its id."""
    tab = SocketUser(server.base)
    await tab.connect()
    try:
        await tab.turn("Name a colour.", max_tokens=4)
    finally:
        await tab.client.disconnect()
    return tab.thread_id


async def test_a_tab_closed_after_reopening_a_thread_writes_back_none_of_the_apps_metadata(
    server: AppServer,
) -> None:
    """Chainlit copies a reopened thread's metadata into the session, and writes that copy
    back when the tab closes. Every key the app owns changes meanwhile (a sharing stopped,
    another reply chosen, sliders moved elsewhere): the close must change none of them."""
    thread_id = await a_short_thread(server)
    before = await asyncio.to_thread(stored_thread, server, thread_id)
    assert before is not None
    settings = dict(before["metadata"]["chat_settings"])
    stale = {
        "chat_settings": settings,
        "chat_profile": before["metadata"]["chat_profile"],
        "chosen_replies": {"a message": "the old reply"},
        "is_shared": True,
        "shared_at": "2026-01-01T00:00:00.000Z",
    }
    fresh = {
        "chat_settings": {**settings, "temperature": 0.25, "preset": "custom"},
        "chat_profile": "local:another-model",
        "chosen_replies": {"a message": "the new reply"},
        "is_shared": False,
        "shared_at": None,
    }
    assert set(stale) == set(fresh) == APP_METADATA  # the sweep covers every key
    await write_metadata(server, thread_id, stale)

    again = SocketUser(server.base, thread_id=thread_id)
    await again.connect()  # reopened: Chainlit holds a copy of `stale` in the session
    try:
        assert again.named("resume_thread")
        await write_metadata(server, thread_id, fresh)
    finally:
        await again.client.disconnect()  # the tab closes: Chainlit writes its copy back

    def closed() -> dict[str, Any]:
        thread = stored_thread(server, thread_id)
        assert thread is not None
        return dict(thread["metadata"])

    for _ in range(200):  # the close's write names the session it came from
        metadata = await asyncio.to_thread(closed)
        if metadata.get("id") == again.session_id:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the closed tab's session was never written")
    for key in APP_METADATA:
        assert metadata.get(key) == fresh[key], key


async def test_a_thread_deleted_while_its_reply_streams_stays_deleted(server: AppServer) -> None:
    tab = SocketUser(server.base)
    await tab.connect()
    try:
        await tab.say(LONG_STORY, **LONG_SETTINGS)  # stored before the model starts
        await tab.wait_for(lambda: len(tab.named("stream_token")) >= 3)
        deleted = httpx.request(
            "DELETE",
            server.base + "/project/thread",
            json={"threadId": tab.thread_id},
            cookies=tab.cookies,
            timeout=30,
        )
        assert deleted.status_code == 200, deleted.text
        await tab.client.emit("stop")  # the reply ends, and is written
        await tab.wait_for(lambda: tab.errors())
        assert any("has been deleted" in error for error in tab.errors())
        await tab.say("And another message.")  # nor does the next message make it again
        await tab.wait_for(lambda: len(tab.errors()) >= 2)
    finally:
        await tab.client.disconnect()
    await asyncio.sleep(1)  # Chainlit's unawaited writes, and the tab's close
    assert await asyncio.to_thread(stored_thread, server, tab.thread_id) is None


async def stop_mid_reply(tab: SocketUser, engine: int, ends: int) -> None:
    """Press Stop with the engine paused, so the generation is still mid-reply when Stop
    arrives however busy the machine; wait for the task to end (past `ends` task ends)."""
    os.kill(engine, signal.SIGSTOP)
    try:
        await tab.client.emit("stop")
        await tab.wait_for(lambda: len(tab.named("task_end")) > ends)
    finally:
        os.kill(engine, signal.SIGCONT)


async def test_regenerate_and_replay_run_as_the_chats_task_and_stop_like_a_reply(
    server: AppServer,
) -> None:
    """Regenerate and Replay, pressed under a reply, run as the chat's task (the page shows
    Stop and holds its send button), stream their text, and the Stop button ends them
    keeping what was written, as it ends a reply. A reply that was stopped replays as far
    as it went, not on to max tokens."""
    tab = SocketUser(server.base)
    await tab.connect()
    assert server.process is not None
    (engine,) = children(server.process.pid)

    async def press(name: str, step: str, stop_after: int | None) -> None:
        starts, ends = len(tab.named("task_start")), len(tab.named("task_end"))
        tokens = len(tab.named("stream_token"))
        action = {"name": name, "payload": {"step": step}, "forId": step, "id": name + step}
        async with httpx.AsyncClient(cookies=tab.cookies, timeout=120) as http:
            pressed = asyncio.create_task(
                http.post(
                    server.base + "/project/action",
                    json={"sessionId": tab.session_id, "action": action},
                )
            )
            await tab.wait_for(lambda: len(tab.named("task_start")) > starts)  # Stop shown
            if stop_after is not None:
                await tab.wait_for(lambda: len(tab.named("stream_token")) >= tokens + stop_after)
                await stop_mid_reply(tab, engine, ends)
            await tab.wait_for(lambda: len(tab.named("task_end")) > ends, seconds=120)
            assert (await pressed).status_code == 200

    def stored(kind: str) -> list[dict[str, Any]]:
        thread = stored_thread(server, tab.thread_id)
        assert thread is not None
        return [s for s in thread["steps"] if (s.get("metadata") or {}).get("kind") == kind]

    try:
        await tab.turn(LONG_STORY, seconds=120, **LONG_SETTINGS)  # 466 tokens, whole
        (first,) = replies(tab)
        await press("regenerate", str(first["id"]), stop_after=3)
        (variant,) = await asyncio.to_thread(stored, "variant")
        assert variant["output"] and variant["metadata"]["finish_reason"] == "cancelled"

        await press("replay", str(first["id"]), stop_after=3)
        (replayed,) = await asyncio.to_thread(stored, "replay")
        assert replayed["metadata"]["receipt"]["finish_reason"] == "cancelled"
        assert "stopped" in replayed["output"] and len(replayed["output"]) < len(first["output"])

        await press("replay", variant["id"], stop_after=None)  # the stopped one, whole
        latest = (await asyncio.to_thread(stored, "replay"))[-1]
        assert latest["metadata"]["replay_of"] == variant["id"]
        assert latest["metadata"]["identical"] is True, latest["output"]
        assert "as far as the original went" in latest["output"]
        assert len(latest["output"]) < len(variant["output"]) + 200  # not on to max tokens
    finally:
        await tab.client.disconnect()


async def test_a_chat_resumed_twice_in_one_page_shows_each_reply_button_once(
    server: AppServer,
) -> None:
    """A page whose socket reconnects sends `connection_successful` again, and Chainlit
    resumes the thread again: the page, which adds every button it is sent, showed each
    reply's buttons twice."""
    again = SocketUser(server.base, thread_id=await a_short_thread(server))
    await again.connect()
    try:
        resumed = len(again.named("resume_thread"))
        await again.client.emit("connection_successful")  # as a reconnecting page does
        await again.wait_for(lambda: len(again.named("resume_thread")) > resumed)
        await again.wait_for(lambda: again.named("task_end"))
        await asyncio.sleep(0.5)  # the buttons follow the thread
    finally:
        await again.client.disconnect()
    shown: list[dict[str, object]] = []  # the page's list of buttons, as it keeps it
    for event, data in again.events:
        if event == "action":
            shown.append(data)
        elif event == "remove_action":
            shown = [a for a in shown if a["id"] != data["id"]]
    buttons = [(a["name"], a["forId"]) for a in shown]
    assert buttons and len(buttons) == len(set(buttons)), buttons


async def test_a_preset_chosen_in_the_open_panel_moves_the_sliders_and_applies_nothing(
    server: AppServer,
) -> None:
    """The open panel's changes (Chainlit's chat_settings_edit, before Confirm): choosing a
    preset sends the panel again with its values on the sliders, and the rest as the person
    left them; it runs no task, and neither the next reply nor the stored thread takes the
    preset until Confirm. A slider's change (many in a drag) sends nothing back."""
    tab = SocketUser(server.base)
    await tab.connect()
    try:
        await tab.turn("Name a colour.", max_tokens=4)
        page = {
            w["id"]: w.get("initial") for w in panel_widgets(tab.named("chat_settings")[-1]["data"])
        }
        assert page["preset"] == "builtin:balanced"
        shown, tasks = len(tab.named("chat_settings")), len(tab.named("task_start"))

        edited = {**page, "max_tokens": 5}  # a slider moved, then a name typed in part
        await tab.client.emit("chat_settings_edit", edited)
        edited["save_preset"] = "half typed"
        await tab.client.emit("chat_settings_edit", edited)
        await tab.client.emit("chat_settings_edit", {**edited, "preset": "builtin:creative"})
        await tab.wait_for(lambda: len(tab.named("chat_settings")) > shown)
        await asyncio.sleep(0.5)  # nothing more comes
        assert len(tab.named("chat_settings")) == shown + 1  # for the slider and text: nothing
        preview = {
            w["id"]: w.get("initial") for w in panel_widgets(tab.named("chat_settings")[-1]["data"])
        }
        assert preview["preset"] == "builtin:creative"
        assert (preview["temperature"], preview["top_k"]) == (1.1, 100)  # Creative's
        assert preview["max_tokens"] == 5  # as the person left it
        assert preview["save_preset"] == "half typed"
        assert len(tab.named("task_start")) == tasks  # no task: the page's Stop stays away

        await tab.turn("Name another colour.")
        receipt = replies(tab)[-1]["metadata"]["receipt"]  # type: ignore[index]
        assert (receipt["sampling"]["temperature"], receipt["sampling"]["top_k"]) == (0.7, 40)
        assert receipt["sampling"]["max_tokens"] == 4
    finally:
        await tab.client.disconnect()
    thread = await asyncio.to_thread(stored_thread, server, tab.thread_id)
    assert thread is not None
    assert thread["metadata"]["chat_settings"]["preset"] == "builtin:balanced"
    assert thread["metadata"]["chat_settings"]["temperature"] == 0.7


async def test_stop_ends_a_comparison_keeping_each_columns_text(server: AppServer) -> None:
    """Stop during a comparison ends it as it ends a reply: the column that was writing
    keeps its text and says it was stopped, the columns not yet begun say they did not
    run, and the comparison is stored so."""
    tab = SocketUser(server.base)
    await tab.connect()
    assert server.process is not None
    (engine,) = children(server.process.pid)

    def columns() -> list[dict[str, Any]]:
        views = [e for e in tab.named("element") if e.get("name") == "Compare"]
        return list(views[-1]["props"]["columns"]) if views else []

    try:
        await tab.apply_settings(LONG_SETTINGS)
        ends = len(tab.named("task_end"))
        await tab.say(LONG_STORY, command="Compare")
        await tab.wait_for(lambda: len((columns() or [{}])[0].get("text") or "") > 20, 120)
        await stop_mid_reply(tab, engine, ends)
        shown = columns()
        thread = await asyncio.to_thread(stored_thread, server, tab.thread_id)
    finally:
        await tab.client.disconnect()
    assert thread is not None
    (holder,) = [s for s in thread["steps"] if (s.get("metadata") or {}).get("kind") == "compare"]
    stored = holder["metadata"]["compare"]["replies"]
    assert [c["text"] for c in shown] == [r["text"] for r in stored]
    assert len(stored) == 3 and len(stored[0]["text"]) > 20
    assert stored[0]["receipt"]["finish_reason"] == "cancelled"
    assert "stopped" in shown[0]["summary"]
    for column, reply in zip(shown[1:], stored[1:], strict=True):  # local: one at a time
        assert reply["text"] == "" and reply["receipt"] is None and reply["ran"] is False
        assert column["summary"] == "not run: the comparison was stopped before its turn"
    markdown = to_markdown(thread_document(thread), "zh-TW")  # the export says so too
    assert markdown.count("*未執行：比較在輪到它之前已停止*") == 2
