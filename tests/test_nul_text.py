"""Text holding U+0000 — a pasted NUL, the model's `<0x00>` byte token — is saved, read
back, found and copied alike on SQLite and PostgreSQL (whose text cannot hold it)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from chainlit.user import User

from chatllm.store import ChatDataLayer, Database, FileStore
from chatllm.store.copy import CopyError, copy_store
from chatllm.store.presets import PresetRows
from deploy.postgres import PostgresServer
from tests.conftest import url
from tests.support import refuse_inserts

NUL, SHOWN = "\x00", "\ufffd"  # what is written, what is stored and read back


def message(step_id: str, kind: str, text: str, **extra: Any) -> Any:  # a StepDict
    return {
        "id": step_id,
        "threadId": "t",
        "type": kind,
        "name": "User" if kind == "user_message" else "chatllm",
        "output": text,
        "createdAt": "2026-01-01T00:00:00.000000Z",  # one instant: read back in written order
        **extra,
    }


async def test_a_message_and_a_reply_holding_nul_are_stored_and_read_back_alike(
    store: ChatDataLayer,
) -> None:
    ada = await store.create_user(User(identifier="ada"))
    assert ada is not None
    await store.update_thread("t", name=f"Light{NUL}house", user_id=ada.id)
    await store.save_message(
        message("q", "user_message", f"Pasted{NUL}: is this a lighthouse?\ud800"),
        thread_metadata={"pasted": f"a{NUL}b"},
    )
    await store.save_message(
        message(
            "rr",
            "assistant_message",
            f"a byte token: {NUL}",
            metadata={"favorite": True, "token": NUL},
        )
    )

    thread = await store.get_thread("t")
    assert thread is not None
    assert thread["name"] == f"Light{SHOWN}house"
    assert [(s["output"], s["metadata"]) for s in thread["steps"]] == [
        (f"Pasted{SHOWN}: is this a lighthouse?{SHOWN}", {}),
        # JSON holds it as the escape \u0000, which text on either database keeps.
        (f"a byte token: {SHOWN}", {"favorite": True, "token": NUL}),
    ]
    assert thread["metadata"]["pasted"] == f"a{NUL}b"
    assert [s["id"] for s in await store.get_favorite_steps(ada.id)] == ["rr"]
    for query in ("lighthouse", "house"):
        assert [t["id"] for t in await store.user_threads(ada.id, search=query)] == ["t"]


async def test_a_sqlite_store_holding_nul_moves_to_postgresql_and_an_interrupted_copy_resumes(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    path = tmp_path / "chatllm.db"
    source = ChatDataLayer(Database(url(path)), FileStore(tmp_path / "files"))
    await source.db.migrate()
    ada = await source.create_user(User(identifier="ada"))
    assert ada is not None
    await source.update_thread("t", name="Lighthouse", user_id=ada.id)
    await source.create_step(message("q", "user_message", "Is this a lighthouse?"))
    await source.create_step(message("rr", "assistant_message", "Yes"))
    await PresetRows(source.db).save(ada.id, "Calm", {"temperature": 0.2}, most=50)
    await source.close()
    # What a store written before text was made storable holds: the text as it came.
    with closing(sqlite3.connect(path)) as raw, raw:
        raw.execute("UPDATE threads SET name = ?", (f"Light{NUL}house",))
        raw.execute(
            "UPDATE steps SET output = ?, metadata = ? WHERE id = 'rr'",
            (f"a byte token: {NUL}", json.dumps({"favorite": True, "token": NUL})),
        )
        raw.execute(
            "INSERT INTO elements (id, thread_id, step_id, type, name)"
            " VALUES ('e', 't', 'rr', 'file', ?)",
            (f"notes{NUL}.txt",),
        )
        raw.execute("UPDATE presets SET name = ?", (f"Calm{NUL}",))

    source = ChatDataLayer(Database(url(path)), FileStore(tmp_path / "files"))
    target = ChatDataLayer(Database(postgres.new_database()), FileStore(tmp_path / "files"))
    await target.db.migrate()
    try:
        await refuse_inserts(target.db, "elements")  # a disk filling up after the steps
        with pytest.raises(CopyError, match="refused elements after the first 0"):
            await copy_store(source.db, target.db)
        await target.db.execute("DROP TRIGGER refuse ON elements")
        found = await copy_store(source.db, target.db, resume=True)
        assert found == {
            "users": 1,
            "threads": 1,
            "steps": 2,
            "feedbacks": 0,
            "elements": 1,
            "presets": 1,
            "ended_sessions": 0,
            "deleted_threads": 0,
            "token_records": 0,
        }

        thread = await target.get_thread("t")
        assert thread is not None
        assert thread["name"] == f"Light{SHOWN}house"
        assert [(s["output"], s["metadata"]) for s in thread["steps"]] == [
            ("Is this a lighthouse?", {}),
            (f"a byte token: {SHOWN}", {"favorite": True, "token": NUL}),
        ]
        assert [e["name"] for e in thread["elements"] or []] == [f"notes{SHOWN}.txt"]
        assert await PresetRows(target.db).for_user(ada.id) == [
            (f"Calm{SHOWN}", {"temperature": 0.2})
        ]
        assert [s["id"] for s in await target.get_favorite_steps(ada.id)] == ["rr"]
        assert [t["id"] for t in await target.user_threads(ada.id, search="house")] == ["t"]
    finally:
        await source.close()
        await target.close()
