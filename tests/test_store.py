"""Saved conversations: the SQLite data layer on real database files in temp dirs."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from chainlit.element import CustomElement, Text
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import PersistedUser, User
from sqlalchemy import event
from sqlalchemy import text as sql_text

from chatllm.store import ChatDataLayer, Database, FileStore, ThreadAccessDenied
from chatllm.store import migrations as migrations_module
from chatllm.store.migrations import MIGRATIONS
from chatllm.store.search import message_rowid
from deploy.postgres import PostgresServer
from tests.conftest import postgresql_only, sqlite_only
from tests.support import BrowserTab

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def ada(store: ChatDataLayer) -> PersistedUser:
    user = await store.create_user(User(identifier="ada"))
    assert user is not None
    return user


@pytest.fixture
async def bob(store: ChatDataLayer) -> PersistedUser:
    user = await store.create_user(User(identifier="bob"))
    assert user is not None
    return user


async def rows_in(store: ChatDataLayer, table: str) -> int:
    return int(await store.db.value(f"SELECT count(*) FROM {table}"))


def step(thread: str, step_id: str, kind: str, text: str, at: str, **extra: Any) -> Any:
    return {
        "id": step_id,
        "threadId": thread,
        "type": kind,
        "name": "User" if kind == "user_message" else "chatllm",
        "output": text,
        "createdAt": at,
        **extra,
    }


async def chat(store: ChatDataLayer, user: PersistedUser, thread: str, *texts: str) -> None:
    """A thread of alternating user and assistant messages, as Chainlit writes one."""
    await store.update_thread(thread, name=texts[0][:40], user_id=user.id)
    for n, text in enumerate(texts):
        kind = "user_message" if n % 2 == 0 else "assistant_message"
        await store.create_step(
            step(thread, f"{thread}-{n}", kind, text, f"2026-01-01T00:00:{n:02d}.000000Z")
        )


# ---- schema


async def test_a_new_database_gets_every_migration_recorded_once(database_url: str) -> None:
    db = Database(database_url)
    assert await db.migrate() == [m.name for m in MIGRATIONS]
    assert await db.migrate() == []  # a restart applies nothing again
    assert await db.applied() == [(n, m.name) for n, m in enumerate(MIGRATIONS, start=1)]
    await db.close()


async def test_an_older_database_is_brought_up_to_date_keeping_its_data(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations_module, "MIGRATIONS", MIGRATIONS[:-1])
    from chatllm.store import db as db_module

    monkeypatch.setattr(db_module, "MIGRATIONS", MIGRATIONS[:-1])
    old = Database(database_url)
    await old.migrate()
    await old.close()
    monkeypatch.setattr(db_module, "MIGRATIONS", MIGRATIONS)
    db = Database(database_url)
    assert await db.migrate() == [MIGRATIONS[-1].name]
    layer = ChatDataLayer(db, FileStore(tmp_path / "files"))
    user = await layer.create_user(User(identifier="ada"))
    assert user is not None
    await chat(layer, user, "t1", "hello", "hi there")
    assert [s["output"] for s in (await layer.get_thread("t1") or {})["steps"]] == [
        "hello",
        "hi there",
    ]
    await layer.close()


async def test_workers_starting_together_apply_each_migration_once(database_url: str) -> None:
    """Several app processes starting at the same moment on one new database: each
    migration is applied by one of them, and none fails."""
    script = (
        "import asyncio, json, sys, time\n"
        "from chatllm.store import Database\n"
        "async def main():\n"
        "    db = Database(sys.argv[1])\n"
        "    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all at once\n"
        "    print(json.dumps(await db.migrate()))\n"
        "    await db.close()\n"
        "asyncio.run(main())\n"
    )
    at = time.time() + 6  # once every worker has loaded the app
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url, str(at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    applied: list[str] = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        applied += json.loads(out)
    assert sorted(applied) == sorted(m.name for m in MIGRATIONS)
    db = Database(database_url)
    assert await db.applied() == [(n, m.name) for n, m in enumerate(MIGRATIONS, start=1)]
    await db.close()


async def test_a_starting_worker_opens_its_connections_before_the_first_user(
    database_url: str,
) -> None:
    """Ready in the pool (a full one on PostgreSQL), so the first users' replies do not
    wait for connections of their own."""
    db = Database(database_url)
    try:
        await db.warm()
        ready = db.reader.sync_engine.pool.checkedin()  # type: ignore[attr-defined]
        assert ready == db.dialect.warm_connections >= 1
    finally:
        await db.close()


async def test_after_postgresql_restarts_the_next_write_and_read_succeed(
    tmp_path: Path,
) -> None:
    """A restart (an upgrade, a crash) drops every connection in the workers' pools: the
    next user's write must not fail on one of them, nor the next read."""
    server = PostgresServer().start()
    db = Database(server.new_database())
    store = ChatDataLayer(db, FileStore(tmp_path / "files"))
    try:
        await db.migrate()
        await db.warm()  # the pool full of connections the restart will drop
        user = await store.create_user(User(identifier="ada"))
        assert user is not None
        await chat(store, user, "t1", "Before the restart")
        server.restart()
        await store.save_message(
            step("t1", "m1", "user_message", "After the restart", "2026-01-01T00:01:00Z")
        )
        thread = await store.get_thread("t1")
        assert thread is not None
        assert [s["output"] for s in thread["steps"]] == ["Before the restart", "After the restart"]
    finally:
        await store.close()
        server.stop()


@sqlite_only
async def test_the_database_file_is_readable_by_its_owner_only(
    store: ChatDataLayer, ada: PersistedUser, tmp_path: Path
) -> None:
    await chat(store, ada, "t1", "private words")
    for file in tmp_path.glob("chatllm.db*"):
        assert file.stat().st_mode & 0o777 == 0o600, file


@sqlite_only
async def test_connections_use_wal_foreign_keys_and_a_busy_timeout(store: ChatDataLayer) -> None:
    from sqlalchemy import text

    async with store.db.read() as conn:
        assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
        assert await conn.scalar(text("PRAGMA foreign_keys")) == 1
        assert await conn.scalar(text("PRAGMA busy_timeout")) >= 5000


@sqlite_only
async def test_a_read_that_turns_into_a_write_waits_instead_of_failing(
    store: ChatDataLayer, ada: PersistedUser, tmp_path: Path
) -> None:
    # Another process holds the write lock for a moment; our write waits its turn, and
    # the event loop (every other chat of this process) goes on meanwhile: the writer
    # runs on the loop's thread, so it must wait with sleeps, never in SQLite's busy wait.
    other = sqlite3.connect(tmp_path / "chatllm.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE users SET metadata = '{}' WHERE identifier = 'ada'")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    write = asyncio.create_task(chat(store, ada, "t1", "hello"))
    await asyncio.sleep(0.3)
    ticker.cancel()
    assert not write.done()
    assert ticks >= 10, ticks  # about 30 in 0.3 s
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(write, timeout=10)
    assert await store.get_thread("t1") is not None


# ---- users


async def test_users_round_trip_without_their_secrets(store: ChatDataLayer) -> None:
    created = await store.create_user(
        User(identifier="ada", display_name="Ada", metadata={"role": "x", "api_key": "sk-1"})
    )
    assert created is not None
    fetched = await store.get_user("ada")
    assert fetched == created
    assert fetched.metadata == {"role": "x", "display_name": "Ada"}
    again = await store.create_user(User(identifier="ada", metadata={"role": "y"}))
    assert again is not None and again.id == created.id and again.metadata["role"] == "y"
    assert await store.get_user("nobody") is None


# ---- threads and steps


async def test_a_thread_round_trips_with_steps_feedback_and_elements(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await store.update_thread(
        "t1", name="Lighthouses", user_id=ada.id, tags=["local"], metadata={"a": 1, "b": 2}
    )
    await store.create_step(step("t1", "u1", "user_message", "Tell me", "2026-01-01T00:00:01Z"))
    await store.create_step(
        step(
            "t1",
            "r1",
            "assistant_message",
            "Lighthouses guide ships.",
            "2026-01-01T00:00:02Z",
            parentId="run-1",
            metadata={"finish_reason": "stop"},
            language="markdown",
            showInput=False,
        )
    )
    await store.create_step(step("t1", "run-1", "run", "", "2026-01-01T00:00:00Z"))
    feedback_id = await store.upsert_feedback(Feedback(forId="r1", value=1, comment="good"))
    tab = BrowserTab()
    tab.enter()
    tab.session.thread_id = "t1"
    tab.session.has_first_interaction = True
    await store.create_element(
        Text(name="../../etc/passwd", content="notes", for_id="r1", thread_id="t1")
    )
    await store.update_thread("t1", metadata={"a": None, "c": 3})

    thread = await store.get_thread("t1")
    assert thread is not None
    assert (thread["name"], thread["userId"], thread["userIdentifier"]) == (
        "Lighthouses",
        ada.id,
        "ada",
    )
    assert thread["tags"] == ["local"]
    assert thread["metadata"] == {"b": 2, "c": 3}  # None removes a key, others merge
    assert [s["id"] for s in thread["steps"]] == ["run-1", "u1", "r1"]
    reply = thread["steps"][2]
    assert reply["parentId"] == "run-1"
    assert reply["metadata"] == {"finish_reason": "stop"}
    assert reply["language"] == "markdown" and reply["showInput"] is False
    assert reply["feedback"] == {"forId": "r1", "id": feedback_id, "value": 1, "comment": "good"}
    (element,) = thread["elements"] or []
    assert element["name"] == "../../etc/passwd" and element["forId"] == "r1"
    assert await store.get_thread_author("t1") == "ada"
    assert await store.get_thread_author("missing") == ""


async def test_steps_made_at_the_same_instant_come_back_in_the_order_they_were_written(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    """The app takes out Chainlit's 1 ms sleep in each Message and Step (chatllm/loop.py),
    which gave them distinct creation times; a thread still reads back in order. The ids
    run against the order, so neither they nor the text can be what sorts them."""
    await store.update_thread("t1", name="At once", user_id=ada.id)
    at = "2026-01-01T00:00:01.000000Z"
    written = [("z", "run"), ("y", "user_message"), ("x", "assistant_message")]
    for step_id, kind in written:
        await store.create_step(step("t1", step_id, kind, f"step {step_id}", at))
    await store.create_step(step("t1", "a", "user_message", "later", "2026-01-01T00:00:02Z"))
    # A notice Chainlit writes late (queued until the first message) shows where it was made.
    await store.create_step(step("t1", "b", "assistant_message", "earlier", "2026-01-01T00:00:00Z"))

    thread = await store.get_thread("t1")
    assert thread is not None
    assert [s["id"] for s in thread["steps"]] == ["b", "z", "y", "x", "a"]


async def test_a_page_size_beyond_reason_gets_the_largest_page(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    for n in range(3):
        await chat(store, ada, f"t{n}", f"thread {n}", "hi")
    for first in (2**63, 2**70, 10**6):
        page = await store.list_threads(Pagination(first=first), ThreadFilter(userId=ada.id))
        assert len(page.data) == 3 and not page.pageInfo.hasNextPage
    page = await store.list_threads(Pagination(first=0), ThreadFilter(userId=ada.id))
    assert len(page.data) == 1 and page.pageInfo.hasNextPage


async def test_an_element_needs_a_thread_and_never_moves_into_another(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await chat(store, ada, "t1", "hello", "hi")
    await chat(store, ada, "t2", "again", "hi again")
    tab = BrowserTab()
    tab.enter()
    tab.session.has_first_interaction = True
    receipt = CustomElement(name="Receipt", props={"seed": 1}, for_id="t1-1", thread_id="t1")
    await store.create_element(receipt)
    for loose in (receipt.id, "a-new-one"):  # no thread: no owner to check
        with pytest.raises(ThreadAccessDenied):
            await store.create_element(
                CustomElement(id=loose, name="Receipt", props={"seed": 2}, thread_id="")
            )
    with pytest.raises(ThreadAccessDenied):  # its id, written as another thread's
        await store.create_element(
            CustomElement(id=receipt.id, name="Receipt", props={"seed": 3}, thread_id="t2")
        )
    kept = await store.get_element("t1", receipt.id)
    assert kept is not None and kept["props"] == {"seed": 1}
    assert await store.get_element("t2", receipt.id) is None
    await store.create_element(  # within its own thread it updates
        CustomElement(id=receipt.id, name="Receipt", props={"seed": 4}, thread_id="t1")
    )
    updated = await store.get_element("t1", receipt.id)
    assert updated is not None and updated["props"] == {"seed": 4}


async def test_element_files_get_generated_names_inside_the_data_dir(
    store: ChatDataLayer, ada: PersistedUser, tmp_path: Path
) -> None:
    await chat(store, ada, "t1", "hello", "hi")
    tab = BrowserTab()
    tab.enter()
    tab.session.has_first_interaction = True
    element = Text(name="../../../evil.sh", content="echo hi", for_id="t1-1", thread_id="t1")
    await store.create_element(element)
    stored = [p for p in (tmp_path / "files").rglob("*") if p.is_file()]
    assert len(stored) == 1
    assert stored[0].read_text() == "echo hi"
    assert stored[0].stat().st_mode & 0o777 == 0o600  # like the database: the owner's only
    for folder in (stored[0].parent, tmp_path / "files"):
        assert folder.stat().st_mode & 0o777 == 0o700
    assert stored[0].is_relative_to(tmp_path / "files")
    assert "evil" not in stored[0].name
    fetched = await store.get_element("t1", element.id)
    assert fetched is not None and fetched["url"] == f"/chatllm/elements/t1/{element.id}"
    assert await store.get_element("other-thread", element.id) is None
    await store.delete_element(element.id, "t1")
    assert not stored[0].exists()
    assert await store.get_element("t1", element.id) is None


async def test_a_step_update_merges_and_never_blanks_the_text(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await chat(store, ada, "t1", "hello", "a full reply")
    await store.update_step(
        step("t1", "t1-1", "assistant_message", "", "2026-01-01T00:00:01.000000Z", isError=True)
    )
    thread = await store.get_thread("t1")
    assert thread is not None
    assert thread["steps"][1]["output"] == "a full reply"
    assert thread["steps"][1]["isError"] is True


async def test_feedback_is_replaced_and_deleted(store: ChatDataLayer, ada: PersistedUser) -> None:
    await chat(store, ada, "t1", "hello", "hi")
    first = await store.upsert_feedback(Feedback(forId="t1-1", value=1))
    second = await store.upsert_feedback(Feedback(forId="t1-1", value=0, comment="meh"))
    thread = await store.get_thread("t1")
    assert thread is not None
    assert thread["steps"][1]["feedback"] == {
        "forId": "t1-1", "id": second, "value": 0, "comment": "meh",
    }  # fmt: skip
    assert await store.delete_feedback(first) is False  # replaced already
    assert await store.delete_feedback(second) is True
    thread = await store.get_thread("t1")
    assert thread is not None and "feedback" not in thread["steps"][1]


async def test_deleting_a_step_removes_it_from_search(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await chat(store, ada, "t1", "hello", "zebras everywhere")
    await store.delete_step("t1-1")
    page = await store.list_threads(
        Pagination(first=5), ThreadFilter(userId=ada.id, search="zebras")
    )
    assert page.data == []


async def test_a_removed_message_stays_removed_when_a_late_write_of_it_arrives(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    """Chainlit writes a message in a task of its own, which can land after the app removed
    that message (a command's, at once): the late write must not bring it back."""
    await chat(store, ada, "t1", "hello", "hi")
    # A notice (the queue's), written by Chainlit in a task nobody awaits
    command = step("t1", "t1-cmd", "assistant_message", "2 ahead", "2026-01-01T00:00:09.000000Z")
    await store.delete_step("t1-cmd")  # removed before its own write arrived
    await store.create_step(command)
    await store.update_step({**command, "output": "export"})
    thread = await store.get_thread("t1")
    assert thread is not None
    assert [s["id"] for s in thread["steps"]] == ["t1-0", "t1-1"]


async def test_a_message_removed_while_its_write_is_in_flight_stays_removed(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    """The app removes a command's message while Chainlit's own write of it may still be
    running: the removal waits for that write, whichever reaches the database first."""
    await chat(store, ada, "t1", "hello", "hi")
    for n in range(20):
        command = step(
            "t1", f"t1-cmd{n}", "assistant_message", "2 ahead", f"2026-01-01T00:01:{n:02d}Z"
        )
        await asyncio.gather(store.create_step(command), store.delete_step(command["id"]))
    thread = await store.get_thread("t1")
    assert thread is not None
    assert [s["id"] for s in thread["steps"]] == ["t1-0", "t1-1"]


async def test_deleting_a_thread_takes_its_steps_feedback_elements_and_files(
    store: ChatDataLayer, ada: PersistedUser, tmp_path: Path
) -> None:
    await chat(store, ada, "t1", "hello zebra", "hi")
    await chat(store, ada, "t2", "keep me", "kept")
    await store.upsert_feedback(Feedback(forId="t1-1", value=1))
    tab = BrowserTab()
    tab.enter()
    tab.session.has_first_interaction = True
    await store.create_element(Text(name="n", content="x", for_id="t1-1", thread_id="t1"))
    await store.delete_thread("t1")
    assert await store.get_thread("t1") is None
    assert not [p for p in (tmp_path / "files").rglob("*") if p.is_file()]
    for table in ("steps", "feedbacks", "elements"):
        expected = 2 if table == "steps" else 0
        assert await rows_in(store, table) == expected, table
    assert await rows_in(store, "search") == 3  # t2's name and two messages
    assert await store.get_thread("t2") is not None


async def test_deleting_a_thread_leaves_the_search_rows_of_the_next_one(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    # Each thread's search rows are one rowid range; the range of one must never reach
    # into the next thread's (seq 2's delete took seq 3's rows with a mask one bit wide).
    for name in ("t1", "t2", "t3"):
        await chat(store, ada, name, f"hello {name}zebra", "hi")
    await store.delete_thread("t2")
    for word, found in (("t1zebra", ["t1"]), ("t2zebra", []), ("t3zebra", ["t3"])):
        page = await store.list_threads(
            Pagination(first=5), ThreadFilter(userId=ada.id, search=word)
        )
        assert [t["id"] for t in page.data] == found


def test_a_step_number_outside_the_search_key_is_refused() -> None:
    assert message_rowid(1, (1 << 32) - 1) == (2 << 32) - 1
    for step_seq in (0, 1 << 32):
        with pytest.raises(ValueError):
            message_rowid(1, step_seq)


# ---- the thread list


async def test_threads_are_listed_by_last_activity(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    for name in ("old", "middle", "new"):
        await chat(store, ada, name, f"{name} question")
    await store.create_step(step("old", "late", "user_message", "back again", "2026-02-01Z"))
    # Chainlit's bookkeeping steps are not activity (and cost the thread no write).
    await store.create_step(step("middle", "run-1", "run", "", "2026-02-02Z"))
    page = await store.list_threads(Pagination(first=10), ThreadFilter(userId=ada.id))
    assert [t["id"] for t in page.data] == ["old", "new", "middle"]
    assert page.pageInfo.hasNextPage is False


async def test_a_message_with_the_session_is_one_write_reading_and_updating_the_thread_once(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    """The user's message and the session (the app's `store_message`, before the model
    runs): the thread read once, locked, and updated once — its activity and its metadata
    in one UPDATE; the message found by search."""
    for name in ("old", "new"):
        await chat(store, ada, name, f"{name} question")
    await store.save_thread_metadata("old", {"chat_settings": {"top_p": 0.9}, "kept": 1})
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()))

    engine = store.db.writer.sync_engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        await store.save_message(
            step("old", "again", "user_message", "lighthouse keeper", "2026-02-01Z"),
            thread_metadata={"chat_settings": {"top_p": 0.5}, "api_key": "sk-never"},
        )
    finally:
        event.remove(engine, "before_cursor_execute", note)
    reads = [s for s in statements if s.startswith("SELECT") and "FROM threads" in s]
    updates = [s for s in statements if s.startswith("UPDATE threads")]
    assert len(reads) == 1 and len(updates) == 1, statements
    assert "updated_at" in updates[0] and "metadata" in updates[0]
    page = await store.list_threads(Pagination(first=10), ThreadFilter(userId=ada.id))
    assert [t["id"] for t in page.data] == ["old", "new"]
    thread = await store.get_thread("old")
    assert thread is not None
    assert thread["metadata"] == {"chat_settings": {"top_p": 0.5}, "kept": 1}
    assert [s["output"] for s in thread["steps"]][-1] == "lighthouse keeper"
    found = await store.list_threads(
        Pagination(first=10), ThreadFilter(userId=ada.id, search="lighthouse")
    )
    assert [t["id"] for t in found.data] == ["old"]
    # A new thread: made by the same write, owned by the acting user (none here).
    await store.save_message(
        step("fresh", "first", "user_message", "hello", "2026-02-02Z"),
        thread_metadata={"chat_settings": {"top_p": 0.7}},
    )
    fresh = await store.get_thread("fresh")
    assert fresh is not None and fresh["metadata"] == {"chat_settings": {"top_p": 0.7}}


async def test_every_thread_is_reachable_page_by_page_past_a_thousand(
    store: ChatDataLayer, ada: PersistedUser, tmp_path: Path
) -> None:
    # Chainlit's SQLAlchemy layer loads at most 1,000 threads and pages in Python; here the
    # 1,001st and later are there too. Seeded in bulk; the data layer reads them.
    total = 1_050
    async with store.db.write() as conn:
        await conn.execute(
            sql_text(
                "INSERT INTO threads (id, user_id, name, created_at, updated_at)"
                " VALUES (:id, :user, :name, '2026-01-01Z', :at)"
            ),
            [
                {
                    "id": f"t{n:04d}",
                    "user": ada.id,
                    "name": f"thread {n}",
                    "at": f"2026-01-01T{n:08d}Z",
                }
                for n in range(total)
            ],
        )
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_threads(
            Pagination(first=100, cursor=cursor), ThreadFilter(userId=ada.id)
        )
        seen += [t["id"] for t in page.data]
        if not page.pageInfo.hasNextPage:
            break
        cursor = page.pageInfo.endCursor
    assert seen == [f"t{n:04d}" for n in reversed(range(total))]


async def test_a_list_request_without_a_user_shows_nothing(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await chat(store, ada, "t1", "hello")
    page = await store.list_threads(Pagination(first=10), ThreadFilter())
    assert page.data == []


async def test_a_malformed_cursor_returns_an_empty_page(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await chat(store, ada, "t1", "hello")
    page = await store.list_threads(
        Pagination(first=10, cursor="garbage"), ThreadFilter(userId=ada.id)
    )
    assert page.data == []


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("lighthouse", ["en"]),
        ("LIGHT", ["en"]),  # prefix, any case
        ("lig", ["en"]),  # three letters are a prefix too
        ("th", []),  # two letters: whole words only, not every word starting with th
        ("keeper lighthouse", ["en"]),  # every word, any order
        ("天氣", ["tw"]),  # Traditional, a two-character word inside a sentence
        ("天气", ["cn"]),  # Simplified
        ("好", ["cn", "tw"]),
        ("明天", []),
        ("Naming", ["named"]),  # thread names too
        ("🌊", ["named"]),  # an emoji in a thread's name
        ("❤️", ["en"]),  # and in a message (with its variation selector)
        ("⭐", []),
        ('"; DROP TABLE threads; --', []),
        ("，。!?", []),  # nothing searchable
        ("   ", ["cn", "en", "named", "tw"]),  # blank: no search
        # Eight terms at most: a ninth, found nowhere, is not searched for.
        ("where is the lighthouse keeper lives there ligh nowhere", ["en"]),
    ],
)
async def test_search_finds_words_in_messages_and_names_chinese_included(
    store: ChatDataLayer, ada: PersistedUser, query: str, found: list[str]
) -> None:
    await chat(store, ada, "en", "Where is the lighthouse?", "The keeper ❤️ lives there.")
    await chat(store, ada, "tw", "今天天氣很好", "是的")
    await chat(store, ada, "cn", "今天天气很好", "好的")
    await store.update_thread("named", name="Naming things 🌊", user_id=ada.id)
    page = await store.list_threads(Pagination(first=10), ThreadFilter(userId=ada.id, search=query))
    assert sorted(t["id"] for t in page.data) == found


async def test_rows_indexed_before_emoji_were_words_are_found_by_them_once_migrated(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    """A database whose search rows were written before an emoji became a word of its own
    (they hold the text with the emoji dropped, as both tokenizers drop it): its threads
    are found by their emoji once the app has started on it (migration 6 indexes them
    again), and by their words as before."""
    await chat(store, ada, "old", "A wave 🌊 came in", "and went ⭐ out")
    await store.update_thread("old", name="Harbour 🚢 log", user_id=ada.id)

    async def found(query: str) -> list[str]:
        page = await store.list_threads(
            Pagination(first=10), ThreadFilter(userId=ada.id, search=query)
        )
        return [t["id"] for t in page.data]

    async with store.db.write() as conn:  # as the app before the change indexed them
        rows = (await conn.execute(sql_text("SELECT rowid, body FROM search"))).all()
        for rowid, body in rows:
            old = " ".join(w for w in body.split() if not w.startswith("emj"))
            await conn.execute(
                sql_text("UPDATE search SET body = :body WHERE rowid = :rowid"),
                {"body": old, "rowid": rowid},
            )
        await conn.execute(sql_text("DELETE FROM schema_migrations WHERE number = 6"))
    assert (await found("🚢"), await found("🌊"), await found("Harbour")) == ([], [], ["old"])

    await store.db.migrate()
    assert MIGRATIONS[5].name == "search: emoji and pictographs in old rows"
    for query in ("🚢", "🌊", "⭐", "Harbour", "wave"):
        assert await found(query) == ["old"], query


@postgresql_only  # SQLite reads every match: FTS5 finds them at once (and has no LATERAL)
@pytest.mark.parametrize("window", [1, 2, 3, 100])
async def test_search_pages_are_the_same_however_many_threads_it_tests_one_by_one(
    store: ChatDataLayer, ada: PersistedUser, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search may test the newest threads one by one and then read the matching rows of
    the older ones (PostgreSQL: `search_walk`): the pages are the same whichever way, or
    where the switch falls, feedback filter and cursors included."""
    monkeypatch.setattr(store.db.dialect, "search_walk", window)
    for n in range(7):
        words = "the lighthouse keeper" if n in (0, 2, 3, 6) else "a quiet harbour"
        await chat(store, ada, f"t{n}", f"{words} {n}", "noted")
    await store.upsert_feedback(Feedback(forId="t2-1", value=1))
    await store.upsert_feedback(Feedback(forId="t3-1", value=1))

    async def pages(**filters: Any) -> list[list[str]]:
        found: list[list[str]] = []
        cursor = None
        while True:
            page = await store.list_threads(
                Pagination(first=2, cursor=cursor), ThreadFilter(userId=ada.id, **filters)
            )
            found.append([t["id"] for t in page.data])
            if not page.pageInfo.hasNextPage:
                return found
            cursor = page.pageInfo.endCursor

    assert await pages(search="lighthouse") == [["t6", "t3"], ["t2", "t0"]]
    assert await pages(search="keeper light") == [["t6", "t3"], ["t2", "t0"]]
    assert await pages(search="lighthouse", feedback=1) == [["t3", "t2"]]
    assert await pages(search="harbour") == [["t5", "t4"], ["t1"]]
    assert await pages(search="zebra") == [[]]


async def test_search_never_shows_another_users_threads(
    store: ChatDataLayer, ada: PersistedUser, bob: PersistedUser
) -> None:
    await chat(store, ada, "a", "secret lighthouse plans")
    page = await store.list_threads(
        Pagination(first=10), ThreadFilter(userId=bob.id, search="lighthouse")
    )
    assert page.data == []


async def test_threads_can_be_filtered_by_feedback(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await chat(store, ada, "liked", "q", "a")
    await chat(store, ada, "plain", "q", "a")
    await store.upsert_feedback(Feedback(forId="liked-1", value=1))
    page = await store.list_threads(Pagination(first=10), ThreadFilter(userId=ada.id, feedback=1))
    assert [t["id"] for t in page.data] == ["liked"]


# ---- ownership


async def test_a_thread_never_changes_owner(
    store: ChatDataLayer, ada: PersistedUser, bob: PersistedUser
) -> None:
    await chat(store, ada, "t1", "mine")
    with pytest.raises(ThreadAccessDenied):
        await store.update_thread("t1", user_id=bob.id, name="stolen")
    assert await store.get_thread_author("t1") == "ada"
    thread = await store.get_thread("t1")
    assert thread is not None and thread["name"] == "mine"


async def test_a_session_cannot_write_into_another_users_thread(
    store: ChatDataLayer, ada: PersistedUser, bob: PersistedUser
) -> None:
    await chat(store, ada, "t1", "mine", "yours")
    tab = BrowserTab()
    tab.session.user = bob
    tab.session.has_first_interaction = True
    tab.enter()
    with pytest.raises(ThreadAccessDenied):  # the app's write of a user's message
        await store.save_message(step("t1", "x", "user_message", "injected", "2026-03-01Z"))
    with pytest.raises(ThreadAccessDenied):  # Chainlit's own writes
        await store.create_step(step("t1", "y", "assistant_message", "injected", "2026-03-01Z"))
    with pytest.raises(ThreadAccessDenied):
        await store.delete_step("t1-1")
    with pytest.raises(ThreadAccessDenied):
        await store.delete_thread("t1")
    with pytest.raises(ThreadAccessDenied):  # reusing a step id from another thread
        await store.save_message(step("bobs", "t1-0", "user_message", "overwrite", "2026-03-01Z"))
    thread = await store.get_thread("t1")
    assert thread is not None
    assert [s["output"] for s in thread["steps"]] == ["mine", "yours"]
    # bob's refused removal of ada's message leaves it hers to change
    tab = BrowserTab()
    tab.session.user = ada
    tab.session.has_first_interaction = True
    tab.enter()
    await store.update_step(
        step("t1", "t1-1", "assistant_message", "yours, edited", "2026-01-01T00:00:01.000000Z")
    )
    thread = await store.get_thread("t1")
    assert thread is not None
    assert [s["output"] for s in thread["steps"]] == ["mine", "yours, edited"]


# ---- nothing lost, nothing secret


@sqlite_only
async def test_a_write_that_fails_raises_and_is_logged(
    store: ChatDataLayer, ada: PersistedUser, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await chat(store, ada, "t1", "hello")
    read_only = Database(f"sqlite+aiosqlite:///file:{tmp_path / 'chatllm.db'}?mode=ro&uri=true")
    layer = ChatDataLayer(read_only, FileStore(tmp_path / "files"))
    caplog.set_level(logging.ERROR, logger="chatllm.store")
    with pytest.raises(Exception, match="readonly"):
        await layer.create_step(step("t1", "s9", "user_message", "lost?", "2026-01-02Z"))
    assert "create_step failed" in caplog.text
    from chatllm.store import StoreError

    with pytest.raises(StoreError):
        await layer.save_step(step("t1", "s9", "user_message", "lost?", "2026-01-02Z"))
    await layer.close()


@sqlite_only
async def test_credentials_in_session_metadata_never_reach_the_file(
    store: ChatDataLayer, ada: PersistedUser, tmp_path: Path
) -> None:
    await chat(store, ada, "t1", "hello")
    await store.update_thread(
        "t1",
        metadata={
            "env": {"OPENAI_API_KEY": "sk-live-123456"},
            "api_key": "sk-live-123456",
            "access_token": "tok-abcdef",
            "client_type": "webapp",
        },
    )
    thread = await store.get_thread("t1")
    assert thread is not None and thread["metadata"] == {"client_type": "webapp"}
    await store.close()
    for file in tmp_path.glob("chatllm.db*"):
        data = file.read_bytes()
        assert b"sk-live-123456" not in data and b"tok-abcdef" not in data, file


async def test_a_new_process_on_the_same_database_sees_the_thread(
    store: ChatDataLayer, ada: PersistedUser, database_url: str, tmp_path: Path
) -> None:
    await chat(store, ada, "t1", "你好", "Hello!")
    await store.close()
    script = (
        "import asyncio, json, sys\n"
        "from chatllm.store import ChatDataLayer, Database, FileStore\n"
        "async def main():\n"
        f"    layer = ChatDataLayer(Database({database_url!r}), FileStore({str(tmp_path)!r}))\n"
        "    thread = await layer.get_thread('t1')\n"
        "    print(json.dumps([(s['type'], s['output']) for s in thread['steps']]))\n"
        "    await layer.close()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == [["user_message", "你好"], ["assistant_message", "Hello!"]]


async def test_favourite_messages_are_listed_for_their_owner(
    store: ChatDataLayer, ada: PersistedUser, bob: PersistedUser
) -> None:
    await chat(store, ada, "t1", "hello", "a reply worth keeping")
    thread = await store.get_thread("t1")
    assert thread is not None
    await store.set_step_favorite(thread["steps"][1], True)
    assert [s["output"] for s in await store.get_favorite_steps(ada.id)] == [
        "a reply worth keeping"
    ]
    assert await store.get_favorite_steps(bob.id) == []
    await store.set_step_favorite(thread["steps"][1], False)
    assert await store.get_favorite_steps(ada.id) == []


async def test_removing_a_user_removes_their_threads_search_rows_and_files(
    store: ChatDataLayer, ada: PersistedUser, bob: PersistedUser, tmp_path: Path
) -> None:
    from chatllm.store.users import Users

    await chat(store, ada, "a1", "ada's lighthouse", "reply")
    await chat(store, bob, "b1", "bob's lighthouse", "reply")
    tab = BrowserTab()
    tab.enter()
    tab.session.has_first_interaction = True
    await store.create_element(Text(name="n", content="x", for_id="a1-1", thread_id="a1"))
    await Users(store.db, store.files).remove("ada")
    assert await store.get_thread("a1") is None
    assert not [p for p in (tmp_path / "files").rglob("*") if p.is_file()]
    page = await store.list_threads(
        Pagination(first=10), ThreadFilter(userId=bob.id, search="lighthouse")
    )
    assert [t["id"] for t in page.data] == ["b1"]
    assert await rows_in(store, "search") == 3  # bob's thread name and two messages


async def test_concurrent_writes_to_a_new_thread_all_land(store: ChatDataLayer) -> None:
    # Chainlit fires the thread update and several step writes as tasks at once.
    import asyncio

    await asyncio.gather(
        store.update_thread("t1", name="busy"),
        *(
            store.create_step(step("t1", f"s{n}", "user_message", f"m{n}", f"2026-01-01T0{n}Z"))
            for n in range(8)
        ),
    )
    thread = await store.get_thread("t1")
    assert thread is not None and len(thread["steps"]) == 8 and thread["name"] == "busy"


async def test_a_deleted_thread_stays_deleted_when_its_session_is_saved(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await chat(store, ada, "t1", "hello", "hi")
    await store.delete_thread("t1")
    # What Chainlit does when the tab that had the thread open disconnects.
    await store.update_thread("t1", metadata={"chat_settings": {"temperature": 0.4}})
    assert await store.get_thread("t1") is None
    page = await store.list_threads(Pagination(first=10), ThreadFilter(userId=ada.id))
    assert page.data == []


async def test_a_message_far_longer_than_the_index_holds_is_stored_whole_and_found(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    """PostgreSQL's tsvector holds at most 1 MB; a pasted 2,000,000-character message of
    distinct words would not fit. It is stored whole, and found by its early words."""
    words = " ".join(f"w{n:07d}" for n in range(250_000))  # 2,000,000 characters
    await chat(store, ada, "long", "needle " + words)
    thread = await store.get_thread("long")
    assert thread is not None and thread["steps"][0]["output"] == "needle " + words
    page = await store.list_threads(
        Pagination(first=5), ThreadFilter(userId=ada.id, search="needle")
    )
    assert [t["id"] for t in page.data] == ["long"]
