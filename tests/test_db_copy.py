"""An operator moving an install to another database: `python -m chatllm db copy`, from
SQLite to a real PostgreSQL server and back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from chainlit.element import Text
from chainlit.types import Feedback, Pagination, ThreadFilter

from chatllm.errors import ThreadDeleted
from chatllm.store import ChatDataLayer, Database, FileStore, copy
from chatllm.store.copy import CopyError, copy_store
from chatllm.store.presets import PresetRows
from chatllm.store.users import Users
from deploy.postgres import PostgresServer
from tests.conftest import url
from tests.support import BrowserTab, command_env, refuse_inserts, run_command

THREADS = 7  # ada's; bob has one


async def open_store(database_url: str, files: Path) -> ChatDataLayer:
    db = Database(database_url)
    await db.migrate()
    return ChatDataLayer(db, FileStore(files))


#: A reply's token records as the store keeps them: bytes, not text (BLOB / BYTEA).
TOKENS = bytes(range(256)) * 3


@pytest.fixture(params=["sqlite-to-postgresql", "postgresql-to-sqlite"])
def direction(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer
) -> tuple[str, str]:
    sqlite, postgresql = url(tmp_path / "chatllm.db"), postgres.new_database()
    return (sqlite, postgresql) if request.param == "sqlite-to-postgresql" else (postgresql, sqlite)


@pytest.fixture
async def source(direction: tuple[str, str], tmp_path: Path) -> AsyncIterator[ChatDataLayer]:
    """An install in use: two password users, threads of several messages (Chinese among
    them) with feedback, a stored element file, presets and a logged-out session."""
    store = await open_store(direction[0], tmp_path / "files")
    users = Users(store.db, store.files)
    await users.add("ada", "$argon2id$ada-hash")
    await users.add("bob", "$argon2id$bob-hash")
    await users.end_session("ada-login-1", int(time.time()) + 3600)
    ada = await store.get_user("ada")
    bob = await store.get_user("bob")
    assert ada is not None and bob is not None
    for n in range(THREADS):
        thread = f"ada-{n}"
        await store.update_thread(thread, name=f"Lighthouse {n}", user_id=ada.id)
        for m, text in enumerate([f"Tell me about lighthouse {n}", "燈塔引導船隻。", "Thanks"]):
            kind = "assistant_message" if m % 2 else "user_message"
            await store.create_step(
                {
                    "id": f"{thread}-{'cba'[m]}",  # ids sort against the order
                    "threadId": thread,
                    "type": kind,
                    "name": "chatllm" if m % 2 else "User",
                    "output": text,
                    # Steps of one second share a time: their order is the insertion order.
                    "createdAt": "2026-01-01T00:00:00.000000Z",
                    "metadata": {"kind": "reply", "seed": m} if m % 2 else {},
                }
            )
    # A branch: the first message of ada-5 answered again, then the first answer chosen.
    await store.save_message(
        {
            "id": "ada-5-v",
            "threadId": "ada-5",
            "type": "assistant_message",
            "output": "另一個版本",
            "createdAt": "2026-01-01T00:00:01.000000Z",
            "metadata": {"kind": "variant", "reply_to": "ada-5-c", "finish_reason": "stop"},
        },
        tokens=TOKENS,  # its X-ray's records
    )
    await store.choose_branch("ada-5", "ada-5-a")
    await store.upsert_feedback(Feedback(forId="ada-3-b", value=1, comment="good"))
    tab = BrowserTab()
    tab.enter()
    tab.session.thread_id = "ada-3"
    tab.session.has_first_interaction = True
    await store.create_element(
        Text(name="notes.txt", content="notes on lighthouses", for_id="ada-3-b", thread_id="ada-3")
    )
    await store.update_thread("bob-0", name="Bob's only thread", user_id=bob.id)
    await store.update_thread("bob-gone", name="Deleted", user_id=bob.id)
    await store.delete_thread("bob-gone")  # remembered: it stays deleted after the move
    presets = PresetRows(store.db)
    await presets.save(ada.id, "Precise", {"temperature": 0.1}, most=50)
    await presets.save(ada.id, "精確", {"temperature": 0.2}, most=50)
    yield store
    await store.close()


async def snapshot(store: ChatDataLayer) -> dict[str, Any]:
    """What a user of the install sees: each user's threads in the list's order, each
    thread whole, searches, presets, passwords and sessions."""
    users = Users(store.db, store.files)
    seen: dict[str, Any] = {}
    for name in ("ada", "bob"):
        user = await store.get_user(name)
        assert user is not None
        listed = await store.list_threads(Pagination(first=50), ThreadFilter(userId=user.id))
        seen[name] = {
            "user": (user.id, user.createdAt, await users.password_hash(name)),
            "threads": [await store.get_thread(t["id"]) for t in listed.data],
            # every branch, and the branch each thread stands on (in get_thread's "tree")
            "whole": [await store.whole_thread(t["id"]) for t in listed.data],
            "presets": await PresetRows(store.db).for_user(user.id),
            "search": {
                query: [t["id"] for t in await store.user_threads(user.id, search=query)]
                for query in ("燈塔", "lighth", "lighthouse 3", "only")
            },
        }
    seen["logged out"] = await users.session_ended("ada", int(time.time() * 1000), "ada-login-1")
    return seen


async def test_a_copy_holds_every_thread_user_preset_and_search_of_the_source(
    source: ChatDataLayer, direction: tuple[str, str], tmp_path: Path
) -> None:
    report: list[str] = []
    target = await open_store(direction[1], tmp_path / "files")
    try:
        found = await copy_store(source.db, target.db, report=report.append)
        assert found == {
            "users": 2,
            "threads": THREADS + 1,
            "steps": THREADS * 3 + 1,
            "feedbacks": 1,
            "elements": 1,
            "presets": 2,
            "ended_sessions": 1,
            "deleted_threads": 1,
            "token_records": 1,
        }
        with pytest.raises(ThreadDeleted):  # a late write to it is refused there too
            await target.save_message(
                {"id": "late", "threadId": "bob-gone", "type": "user_message", "output": "?"}
            )
        seen = await snapshot(target)
        assert seen == await snapshot(source)
        # Not vacuous: the searches found what they should, the element kept its file.
        newest = ["ada-5"] + [f"ada-{n}" for n in reversed(range(THREADS)) if n != 5]
        assert seen["ada"]["search"]["燈塔"] == newest  # ada-5 was answered again last
        assert seen["ada"]["search"]["lighthouse 3"] == ["ada-3"]
        assert seen["bob"]["search"]["only"] == ["bob-0"]
        assert seen["logged out"] is True
        (branched,) = [t for t in seen["ada"]["threads"] if t["id"] == "ada-5"]
        assert branched["tree"]["siblings"] == {"ada-5-a": ["ada-5-a", "ada-5-v"]}
        assert branched["tree"]["choices"] == {"ada-5-c": "ada-5-a"}
        assert [e["name"] for t in seen["ada"]["threads"] for e in t["elements"] or []] == [
            "notes.txt"
        ]
        assert await target.token_records("ada-5", "ada-5-v") == TOKENS  # byte for byte
        key = await target.db.value("SELECT object_key FROM elements")
        assert target.files.path(key).read_bytes() == b"notes on lighthouses"
        assert report[-1] == f"search: rebuilt for {THREADS + 1} threads"
    finally:
        await target.close()


async def test_an_interrupted_copy_is_finished_by_running_it_again(
    source: ChatDataLayer,
    direction: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(copy, "BATCH", 4)  # so the copy stops with some steps written
    target = await open_store(direction[1], tmp_path / "files")
    try:
        await refuse_inserts(target.db, "steps", "NEW.id = 'ada-4-c'")
        with pytest.raises(CopyError, match="refused steps after the first 12"):
            await copy_store(source.db, target.db)
        assert await target.db.value("SELECT count(*) FROM steps") == 12
        on = " ON steps" if target.db.dialect.name == "postgresql" else ""
        await target.db.execute(f"DROP TRIGGER refuse{on}")
        with pytest.raises(CopyError, match="--resume"):
            await copy_store(source.db, target.db)  # not into a target holding data
        await copy_store(source.db, target.db, resume=True)
        # Every message in its place, the search rebuilt for the threads copied late too.
        assert await snapshot(target) == await snapshot(source)
    finally:
        await target.close()


async def test_the_command_copies_and_refuses_a_target_that_holds_data(
    source: ChatDataLayer, direction: tuple[str, str], tmp_path: Path, postgres: PostgresServer
) -> None:
    env = command_env(tmp_path, CHATLLM_DATABASE_URL=direction[0])
    to = direction[1]
    if to.startswith("postgresql"):  # a password in the URL is never printed
        to = to.replace(f"{PostgresServer.USER}@", f"{PostgresServer.USER}:hunter2@")
    status, output = run_command(env, "db", "copy", "--to", to)
    assert status == 0, output
    assert (
        "Copied 2 users, 8 threads, 22 steps, 1 token records, 1 feedbacks, 1 elements, 2 presets"
        in output
    )
    assert "hunter2" not in output
    status, output = run_command(env, "db", "copy", "--to", to)
    assert status == 1
    assert "the target already holds 2 users, 8 threads" in output and "--resume" in output
    status, output = run_command(env, "db", "copy", "--to", to, "--resume")
    assert status == 0, output  # a re-run of a finished copy adds nothing and still checks


def test_a_missing_source_file_is_refused_not_created(tmp_path: Path) -> None:
    env = command_env(tmp_path)
    missing = tmp_path / "elsewhere" / "chatllm.db"
    status, output = run_command(
        env, "db", "copy", "--from", url(missing), "--to", url(tmp_path / "new.db")
    )
    assert status == 1
    assert f"there is no database at {missing}" in output
    assert not missing.exists() and not (tmp_path / "new.db").exists()
