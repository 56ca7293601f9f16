"""A deleted thread stays deleted, on SQLite and PostgreSQL: a reply still streaming when
it was deleted, Chainlit's late background writes, a closing tab, or the user's removal
never bring it back. (The running app's side is in test_socket.py.)"""

from __future__ import annotations

import pytest
from chainlit.element import Text
from chainlit.user import User

from chatllm.errors import ThreadDeleted
from chatllm.store import ChatDataLayer
from chatllm.store.users import Users
from tests.test_store import chat, rows_in, step

LATE = "2026-01-01T00:01:00.000000Z"


async def test_no_late_write_brings_a_deleted_thread_back(store: ChatDataLayer) -> None:
    ada = await store.create_user(User(identifier="ada"))
    assert ada is not None
    await chat(store, ada, "t1", "hello", "hi")
    await store.delete_thread("t1")

    # Chainlit's own writes, mostly tasks nobody awaits: dropped, said in the log.
    reply = step("t1", "t1-late", "assistant_message", "a reply that was streaming", LATE)
    await store.create_step(reply)
    await store.update_step({**reply, "output": "its end"})
    await store.update_thread("t1", name="hello", user_id=ada.id, tags=["local"])
    await store.update_thread("t1", metadata={"chat_settings": {"temperature": 0.4}})
    await store.create_element(
        Text(name="late.txt", content="late", for_id="t1-late", thread_id="t1")
    )
    # The app's own writes, which it awaits: refused, so the user can be told why.
    with pytest.raises(ThreadDeleted):
        await store.save_message(
            step("t1", "t1-next", "user_message", "one more", LATE),
            thread_metadata={"chat_settings": {"temperature": 0.4}},
        )
    with pytest.raises(ThreadDeleted):
        await store.save_step(reply)
    await store.save_thread_metadata("t1", {"is_shared": True})  # nothing to write to

    assert await store.get_thread("t1") is None
    for table in ("threads", "steps", "elements", "search"):
        assert await rows_in(store, table) == 0, table
    assert not [f for f in store.files.root.rglob("*") if f.is_file()]  # no file left over
    # Another thread is written as ever.
    await chat(store, ada, "t2", "a new chat", "welcome")
    assert await store.get_thread("t2") is not None


async def test_a_removed_users_threads_stay_deleted(store: ChatDataLayer) -> None:
    ada = await store.create_user(User(identifier="ada"))
    assert ada is not None
    await chat(store, ada, "t1", "hello", "hi")
    await Users(store.db, store.files).remove("ada")
    await store.create_step(step("t1", "t1-late", "assistant_message", "late", LATE))
    with pytest.raises(ThreadDeleted):
        await store.save_message(step("t1", "t1-next", "user_message", "still here?", LATE))
    assert await store.get_thread("t1") is None
    assert await rows_in(store, "threads") == 0
