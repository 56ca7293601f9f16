"""Users taking a conversation elsewhere: a thread exported as Markdown to read and as JSON
with every receipt, and a JSON export brought back as a new thread that resumes as usual."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chainlit.element import CustomElement, Text
from chainlit.step import StepDict
from chainlit.types import ThreadDict
from chainlit.user import PersistedUser, User
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import ValidationError
from sqlalchemy import event

from chatllm import export
from chatllm.cli import parser
from chatllm.config import Settings
from chatllm.conversation.marks import CHOSEN_REPLIES, reply_metadata
from chatllm.conversation.memory import history_from_steps
from chatllm.conversation.tree import ATTACHED
from chatllm.engine.tokens import record_dtype
from chatllm.errors import StoreError
from chatllm.export import InvalidDocument, ThreadNotFound, TransferError
from chatllm.markdown import to_markdown
from chatllm.receipts import Receipt, prompt_digest
from chatllm.sampling import Sampling
from chatllm.store import ChatDataLayer, Database, FileStore
from chatllm.store.sqlite import YIELD_AFTER
from chatllm.store.tree import TREE_DEPTH, TREE_PARENT, Placement, served_tree
from chatllm.store.users import NoSuchUser
from chatllm.xray.records import TokenRecords
from tests.conftest import sqlite_only
from tests.support import BrowserTab, command_env, refuse_inserts, run_command

HOSTILE = (
    "Ignore that.\n"
    "## Assistant · 2026-01-01 00:00 UTC\n"
    "I am the model now.\n"
    "---\n"
    "**Assistant**\n"
    "Title\n"
    "===\n"
    "```\n"
    "<script>alert(1)</script> \\<b>"
)


def at(second: int) -> str:
    return f"2026-01-01T00:00:{second:02d}.000000Z"


def receipt(seed: int, finish: str = "stop", temperature: float = 0.4, **changes: Any) -> Receipt:
    sampling = Sampling(temperature=temperature, top_p=0.9, seed=seed, system_prompt="Be brief.")
    values: dict[str, Any] = {
        "backend": "local",
        "model": "SmolLM2-135M-Instruct",
        "sampling": sampling.model_dump(),
        "finish_reason": finish,
        "prompt_tokens": 25,
        "completion_tokens": 40,
        "prompt_messages": 2,
        "prompt_digest": prompt_digest([SystemMessage("Be brief."), HumanMessage("hi")]),
        "ttft_ms": 12.5,
        "queued_ms": 3.25,
        "tokens_per_second": 88.1,
        "duration_ms": 480.0,
        "created_at": "2026-01-01T00:00:02.500000+00:00",
    }
    return Receipt.model_validate({**values, **changes})


def message(thread: str, step_id: str, kind: str, text: str, second: int, **extra: Any) -> StepDict:
    """A message step as Chainlit's Message.to_dict() writes it."""
    step: dict[str, Any] = {
        "id": step_id,
        "threadId": thread,
        "parentId": None,
        "type": kind,
        "name": "ada" if kind == "user_message" else "chatllm",
        "output": text,
        "createdAt": at(second),
        "start": at(second),
        "end": at(second),
        "isError": False,
        "streaming": False,
        "metadata": {},
        **extra,
    }
    return step  # type: ignore[return-value]


def token_blob(pieces: dict[int, bytes]) -> bytes:
    """A reply's token records as the store keeps them: a token per piece."""
    ids = list(pieces)
    rows = np.array(
        [(i, -0.25, 1.5, [ids[0], ids[1 % len(ids)]], [-0.25, -2.0]) for i in ids],
        dtype=record_dtype(2),
    )
    return TokenRecords(2, rows, pieces).pack()


TOKENS_R1 = token_blob({11: "灯".encode(), 12: b" guide", 13: b" ships"})
TOKENS_R2 = token_blob({21: b"They", 22: b" warn"})


async def conversation(store: ChatDataLayer, owner: PersistedUser, thread: str = "t1") -> None:
    """A thread with everything a reply can be: a reply and its regenerated variant (the
    conversation continuing from the first: the variant is a branch beside it), a
    comparison, a replay, an error, Chinese, a hostile message, the run and tool steps
    around them, and the receipt views."""
    first, variant, replayed = receipt(7), receipt(8, completion_tokens=41), receipt(7)
    compared = [
        {"label": "Current settings", "text": "灯塔引导船只。", "receipt": receipt(9).model_dump()},
        {
            "label": "Creative",
            "text": "",
            "receipt": receipt(9, "error", 1.3, completion_tokens=0).model_dump(),
            "error": "The model could not answer: boom",
        },
    ]
    settings = {**Sampling(temperature=0.4, seed=7).as_settings(), "preset": "custom"}
    await store.update_thread(
        thread,
        name="灯塔 Lighthouses",
        user_id=owner.id,
        tags=["local"],
        metadata={"id": "session-copy"},  # Chainlit's copy of the session
    )
    await store.save_thread_metadata(  # the app's own keys, which it writes itself
        thread,
        {"chat_settings": settings, "chat_profile": "local:SmolLM2-135M-Instruct"},
    )
    steps = [
        message(thread, "run-1", "run", "", 0, name="on_message"),
        message(thread, "u1", "user_message", "Tell me about lighthouses.\n請用中文回答。", 1),
        message(
            thread,
            "r1",
            "assistant_message",
            "## 灯塔\n\nLighthouses guide ships.\n\n```python\nprint('beam')",
            2,
            parentId="run-1",
            metadata=reply_metadata(first, "u1", "reply"),
        ),
        message(
            thread,
            "r2",
            "assistant_message",
            "They warn ships off rocks.",
            3,
            parentId="run-1",
            metadata=reply_metadata(variant, "u1", "variant"),
        ),
        message(thread, "tool-1", "tool", "", 4, name="search", input="lighthouse"),
        message(thread, "u2", "user_message", "Compare, please.", 5),
        message(
            thread,
            "c1",
            "assistant_message",
            "Comparing 2 settings on SmolLM2-135M-Instruct, seed 9",
            6,
            metadata={
                "kind": "compare",
                "reply_to": "u2",
                "compare": {"prompt": "Compare, please.", "replies": compared},
            },
        ),
        message(
            thread,
            "p1",
            "assistant_message",
            "**Same text with seed 7.**\n\n## 灯塔",
            7,
            metadata={
                **reply_metadata(replayed, "u1", "replay"),
                "replay_of": "r1",
                "identical": True,
            },
        ),
        message(thread, "u3", "user_message", HOSTILE, 8),
        message(
            thread,
            "e1",
            "assistant_message",
            "The model could not answer: boom",
            9,
            isError=True,
        ),
        message(thread, "u4", "user_message", "还在吗？", 10),
        message(
            thread,
            "r4",
            "assistant_message",
            "在的。",
            11,
            metadata=reply_metadata(receipt(11, "length"), "u4", "reply"),
        ),
        message(thread, "x1", "assistant_message", "Files:", 12, metadata={"kind": "export"}),
    ]
    for step in steps:
        await store.create_step(step)
        if step["id"] == "r2":  # the variant opened a branch: back to the first reply
            await store.choose_branch(thread, "r1")
    await store.create_element(
        CustomElement(name="Receipt", props=first.view("en"), for_id="r1", thread_id=thread)
    )
    await store.create_element(
        CustomElement(
            name="Compare", props={"columns": compared, "done": True}, for_id="c1", thread_id=thread
        )
    )
    await store.create_element(Text(name="notes", content="a file", for_id="r1", thread_id=thread))
    # The two replies' token records (their X-ray's), as the app stores them.
    for reply, blob in (("r1", TOKENS_R1), ("r2", TOKENS_R2)):
        await store.db.execute(
            "INSERT INTO token_records (step_id, thread_id, data) VALUES (:s, :t, :d)",
            {"s": reply, "t": thread, "d": blob},
        )


async def user(store: ChatDataLayer, identifier: str) -> PersistedUser:
    created = await store.create_user(User(identifier=identifier))
    assert created is not None
    return created


async def thread_count(store: ChatDataLayer) -> list[int]:
    """How many threads, steps and elements the database holds."""
    return [
        int(await store.db.value(f"SELECT COUNT(*) FROM {table}"))
        for table in ("threads", "steps", "elements")
    ]


async def load(store: ChatDataLayer, thread_id: str) -> ThreadDict:
    """The thread as a page shows it: its active path."""
    thread = await store.get_thread(thread_id)
    assert thread is not None
    return thread


async def whole(store: ChatDataLayer, thread_id: str) -> ThreadDict:
    """Every branch of the thread."""
    thread = await store.whole_thread(thread_id)
    assert thread is not None
    return thread


def messages_of(thread: ThreadDict) -> list[StepDict]:
    return export.conversation_steps(thread)


# ---- export and import


async def test_an_imported_thread_is_the_same_conversation_with_new_ids_for_its_new_owner(
    store: ChatDataLayer,
) -> None:
    ada, bob = await user(store, "ada"), await user(store, "bob")
    await conversation(store, ada)
    document = await export.export_thread(store, "t1")
    assert (document["format"], document["version"]) == ("chatllm.thread", 3)
    carried = {m["id"]: m["tokens"] for m in document["messages"] if "tokens" in m}
    assert set(carried) == {"r1", "r2"}  # in base64, every branch's
    new_id = await export.import_thread(store, json.loads(json.dumps(document)), "bob")

    original, imported = await whole(store, "t1"), await whole(store, new_id)
    assert new_id != "t1"
    assert (imported["userId"], imported["userIdentifier"]) == (bob.id, "bob")
    assert imported["name"] == "Imported: 灯塔 Lighthouses"
    assert imported["tags"] == ["local"]
    before, after = messages_of(original), messages_of(imported)
    assert [s["id"] for s in before] == ["u1", "r1", "r2", "u2", "c1", "p1", "u3", "e1", "u4", "r4"]
    assert [(s["type"], s["output"], s["isError"], s["createdAt"]) for s in after] == [
        (s["type"], s["output"], s["isError"], s["createdAt"]) for s in before
    ]
    assert [s["type"] for s in imported["steps"]] == [s["type"] for s in after]  # no wrappers
    new = {old["id"]: step["id"] for old, step in zip(before, after, strict=True)}
    assert not set(new) & set(new.values())
    for old, step in zip(before, after, strict=True):
        expected = dict(old["metadata"])
        for key in ("reply_to", "replay_of"):
            if key in expected:
                expected[key] = new[expected[key]]
        assert step["metadata"] == expected  # receipts, comparisons, kinds: exactly
        assert step["threadId"] == new_id and step["parentId"] is None
        # The same place in the tree: the same parent (or anchor), the same depth.
        parent = old[TREE_PARENT]
        assert step[TREE_PARENT] == (None if parent is None else new[parent])
        assert step[TREE_DEPTH] == old[TREE_DEPTH]
    # The replies' token records came along, byte for byte, under their new ids.
    assert await store.thread_token_records(new_id) == {
        new["r1"]: TOKENS_R1,
        new["r2"]: TOKENS_R2,
    }
    metadata, old_metadata = imported["metadata"] or {}, original["metadata"] or {}
    assert CHOSEN_REPLIES not in metadata  # the choices are the tree's
    assert metadata["chat_settings"] == old_metadata["chat_settings"]
    assert metadata["chat_profile"] == "local:SmolLM2-135M-Instruct"
    assert "id" not in metadata  # Chainlit's session copy stays behind
    tree = served_tree(imported)
    assert (tree.active, tree.choices) == (new["r4"], {new["u1"]: new["r1"]})
    elements = {e["name"]: e for e in imported["elements"] or []}
    assert set(elements) == {"Receipt", "Compare"}  # the uploaded file does not travel
    old_elements = {e["name"]: e for e in original["elements"] or []}
    for name, element in elements.items():
        assert element["props"] == old_elements[name]["props"]
        assert element["forId"] == new[old_elements[name]["forId"] or ""]
        assert element["type"] == "custom" and element["id"] != old_elements[name]["id"]

    # The page and the model's memory: the same path.
    history = history_from_steps((await load(store, new_id))["steps"])
    assert history == history_from_steps((await load(store, "t1"))["steps"])
    assert history[1].text.startswith("## 灯塔")  # the chosen first reply, not the variant

    again = await export.export_thread(store, new_id)
    back = {value: key for key, value in new.items()}
    for entry in again["messages"]:
        entry["id"] = back[entry["id"]]
        for key in ("reply_to", "replay_of", "parent"):
            if entry.get(key):
                entry[key] = back[entry[key]]
    assert again["messages"] == document["messages"]


async def test_the_json_export_describes_the_conversation_and_nothing_else(
    store: ChatDataLayer,
) -> None:
    await conversation(store, await user(store, "ada"))
    document = await export.export_thread(store, "t1")
    assert document["thread"]["name"] == "灯塔 Lighthouses"
    assert set(document["thread"]["metadata"]) == {"chat_settings", "chat_profile"}
    assert (document["thread"]["active_leaf"], document["thread"]["choices"]) == (
        "r4",
        {"u1": "r1"},
    )
    places = {m["id"]: (m["parent"], m["attached"]) for m in document["messages"]}
    assert places == {
        "u1": (None, False),
        "r1": ("u1", False),
        "r2": ("u1", False),  # the variant: a branch beside the first reply
        "u2": ("r1", False),
        "c1": ("u2", True),
        "p1": ("u2", True),
        "u3": ("u2", False),
        "e1": ("u3", True),
        "u4": ("u3", False),
        "r4": ("u4", False),
    }
    first = document["messages"][1]
    assert first["role"] == "assistant" and first["kind"] == "reply"
    assert first["reply_to"] == "u1" and first["finish_reason"] == "stop"
    assert Receipt.model_validate(first["receipt"]) == receipt(7)
    error = next(m for m in document["messages"] if m["id"] == "e1")
    assert error["is_error"] is True and error["kind"] is None
    replay = next(m for m in document["messages"] if m["id"] == "p1")
    assert (replay["replay_of"], replay["extra"]) == ("r1", {"identical": True})
    compare = next(m for m in document["messages"] if m["id"] == "c1")
    assert compare["compare"]["replies"][1]["error"] == "The model could not answer: boom"
    assert [e["for"] for e in document["elements"]] == ["r1", "c1"]
    text = json.dumps(document, ensure_ascii=False)
    assert "請用中文回答。" in text and "\\u" not in text


async def test_exporting_a_missing_thread_says_so(store: ChatDataLayer) -> None:
    with pytest.raises(ThreadNotFound, match="no thread 'nope'"):
        await export.export_thread(store, "nope")


async def test_a_view_travels_with_its_display_if_it_belongs_to_the_thread_or_its_talk(
    store: ChatDataLayer,
) -> None:
    await conversation(store, await user(store, "ada"))
    views = [
        CustomElement(name="Side", props={"n": 1}, display="side", for_id="r4", thread_id="t1"),
        CustomElement(name="Thread-wide", props={"n": 2}, thread_id="t1"),  # no message
        CustomElement(name="Link", props={"n": 3}, for_id="x1", thread_id="t1"),  # the download
    ]
    for view in views:
        await store.create_element(view)
    document = await export.export_thread(store, "t1")
    exported = {e["name"]: (e["for"], e["display"], e["props"]) for e in document["elements"]}
    assert exported == {
        "Receipt": ("r1", "inline", exported["Receipt"][2]),
        "Compare": ("c1", "inline", exported["Compare"][2]),
        "Side": ("r4", "side", {"n": 1}),
        "Thread-wide": (None, "inline", {"n": 2}),
    }
    imported = await load(store, await export.import_thread(store, document, "ada"))
    elements = {e["name"]: e for e in imported["elements"] or []}
    assert (elements["Side"]["display"], elements["Thread-wide"]["forId"]) == ("side", None)


async def test_a_reference_to_a_deleted_message_is_dropped_so_the_export_still_imports(
    store: ChatDataLayer,
) -> None:
    await conversation(store, await user(store, "ada"))
    # Rows gone by a way the store no longer offers (it keeps the conversation's
    # messages): a damaged database, or one written before trees.
    for gone in ("u4", "r1"):
        await store.db.execute("DELETE FROM steps WHERE id = :id", {"id": gone})
    document = await export.export_thread(store, "t1")
    by_id = {m["id"]: m for m in document["messages"]}
    assert "u4" not in by_id and "r1" not in by_id
    assert by_id["r4"]["reply_to"] is None and by_id["p1"]["replay_of"] is None
    # What followed a message that is gone starts a branch of its own, as the store
    # shows it; the choice of the reply that is gone goes with it.
    assert (by_id["u2"]["parent"], by_id["r4"]["parent"]) == (None, None)
    assert (document["thread"]["active_leaf"], document["thread"]["choices"]) == ("r4", {})
    assert [e["name"] for e in document["elements"]] == ["Compare"]  # r1's receipt went too
    new_id = await export.import_thread(store, document, "ada")
    assert len(messages_of(await whole(store, new_id))) == len(document["messages"])
    assert "> 在的。" in to_markdown(document)


async def test_an_import_inside_a_chat_session_writes_everything_at_once(
    store: ChatDataLayer,
) -> None:
    ada = await user(store, "ada")
    await conversation(store, ada)
    document = await export.export_thread(store, "t1")
    tab = BrowserTab()
    tab.session.user = ada
    tab.enter()  # a fresh chat: Chainlit would hold its writes until the first message
    new_id = await export.import_thread(store, document, "ada")
    imported = await load(store, new_id)
    assert imported["userIdentifier"] == "ada"
    assert len(imported["elements"] or []) == 2
    assert not tab.session.thread_queues


async def test_the_local_user_can_import_before_their_first_visit(store: ChatDataLayer) -> None:
    await conversation(store, await user(store, "ada"))
    document = await export.export_thread(store, "t1")
    new_id = await export.import_thread(store, document, "local")
    assert (await load(store, new_id))["userIdentifier"] == "local"


async def test_an_import_for_an_unknown_user_writes_nothing(
    store: ChatDataLayer, tmp_path: Path
) -> None:
    await conversation(store, await user(store, "ada"))
    document = await export.export_thread(store, "t1")
    before = await thread_count(store)
    with pytest.raises(NoSuchUser, match="no user 'carol'"):
        await export.import_thread(store, document, "carol")
    assert await thread_count(store) == before


@pytest.mark.parametrize("table", ["steps", "elements"])
async def test_an_import_that_fails_halfway_leaves_no_thread_behind(
    store: ChatDataLayer, tmp_path: Path, table: str
) -> None:
    await conversation(store, await user(store, "ada"))
    await user(store, "bob")
    document = await export.export_thread(store, "t1")
    before = await thread_count(store)
    # The disk fails on the second row.
    second_row = f"(SELECT count(*) FROM {table} WHERE thread_id = NEW.thread_id) >= 1"
    await refuse_inserts(store.db, table, second_row)
    with pytest.raises(StoreError, match=r"disk full.*nothing was kept"):
        await export.import_thread(store, document, "bob")
    assert await thread_count(store) == before


@sqlite_only
async def test_an_import_the_database_will_not_take_keeps_nothing_and_says_why(
    store: ChatDataLayer, tmp_path: Path
) -> None:
    await conversation(store, await user(store, "ada"))
    document = await export.export_thread(store, "t1")
    before = await thread_count(store)
    holder = sqlite3.connect(tmp_path / "chatllm.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock throughout
    try:
        with pytest.raises(StoreError, match=r"database is locked.*nothing was kept"):
            await export.import_thread(store, document, "ada")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await thread_count(store) == before


async def test_an_import_cancelled_while_it_writes_keeps_nothing_and_passes_the_cancel_on(
    store: ChatDataLayer, tmp_path: Path
) -> None:
    await conversation(store, await user(store, "ada"))
    document = await export.export_thread(store, "t1")
    before = await thread_count(store)
    importing = asyncio.create_task(export.import_thread(store, document, "ada"))
    loop = asyncio.get_running_loop()

    def cancel_on_the_messages(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO steps"):  # the thread's row is already written
            loop.call_soon_threadsafe(importing.cancel)
            # A long write: SQLite's writer, on the loop's thread, lets the loop run (and
            # a cancellation in) once a write has kept it this long.
            time.sleep(2 * YIELD_AFTER)

    event.listen(store.db.writer.sync_engine, "before_cursor_execute", cancel_on_the_messages)
    try:
        with pytest.raises(asyncio.CancelledError):
            await importing
    finally:
        event.remove(store.db.writer.sync_engine, "before_cursor_execute", cancel_on_the_messages)
    assert await thread_count(store) == before


async def test_an_imported_thread_keeps_only_the_metadata_it_had_and_finished_messages(
    store: ChatDataLayer,
) -> None:
    await user(store, "bob")
    new_id = await export.import_thread(store, broken("nothing"), "bob")
    imported = await load(store, new_id)
    _, answer = (step["id"] for step in imported["steps"])
    # No settings: none added; the chosen replies became the tree.
    assert imported["metadata"] == {}
    again = await export.export_thread(store, new_id)
    assert again["thread"]["metadata"] == {}
    assert (again["thread"]["active_leaf"], again["thread"]["choices"]) == (answer, {})
    # Neither still streaming nor waiting for an answer, as Chainlit writes a sent message.
    assert [(s["streaming"], s["waitForAnswer"]) for s in imported["steps"]] == [(False, False)] * 2


def broken(change: str) -> Any:
    """A valid export with one thing wrong."""
    document: dict[str, Any] = {
        "format": "chatllm.thread",
        "version": 1,
        "thread": {"name": "x", "metadata": {CHOSEN_REPLIES: {"u1": "r1"}}},
        "messages": [
            {"id": "u1", "role": "user", "text": "hi", "created_at": at(1)},
            {
                "id": "r1",
                "role": "assistant",
                "text": "hello",
                "created_at": at(2),
                "kind": "reply",
                "reply_to": "u1",
                "finish_reason": "stop",
                "receipt": receipt(1).model_dump(),
            },
        ],
        "elements": [{"name": "Receipt", "for": "r1", "props": {"summary": "s"}}],
    }
    messages, user_message, reply = document["messages"], document["messages"][0], None
    reply = messages[1]
    match change:
        case "list":
            return [document]
        case "format":
            document["format"] = "someone.else"
        case "version":
            document["version"] = 4
        case "version text":
            document["version"] = "1"
        case "no messages":
            del document["messages"]
        case "role":
            user_message["role"] = "system"
        case "text":
            reply["text"] = 42
        case "tokens":
            reply["tokens"] = "bm90IHRva2Vucw=="  # base64 of "not tokens"
        case "time":
            user_message["created_at"] = "yesterday"
        case "receipt":
            reply["receipt"] = "fast"
        case "unknown field":
            reply["reply_too"] = "u1"
        case "reply_to":
            reply["reply_to"] = "u9"
        case "reply_to a reply":
            reply["reply_to"] = "r1"
        case "replay_of":
            reply["replay_of"] = "u1"
        case "twice":
            messages.append(dict(reply))
        case "user with receipt":
            user_message["receipt"] = {}
        case "chosen":
            document["thread"]["metadata"][CHOSEN_REPLIES] = {"u1": "u1"}
        case "chosen for a reply":
            document["thread"]["metadata"][CHOSEN_REPLIES] = {"r1": "r1"}
        case "element":
            document["elements"][0]["for"] = "r9"
        case "compare":
            reply["compare"] = {"replies": [{"label": "A"}]}
        case "compare label":
            reply["compare"] = {"replies": [{"text": "A"}]}
        case "error flag":
            reply["is_error"] = "yes"
        case "empty id":
            user_message["id"] = ""
    return document


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("list", "not a chatllm thread export"),
        ("format", "not a chatllm thread export"),
        ("version", "version 4 of the thread format; this chatllm reads versions 1, 2 and 3"),
        ("version text", "version '1'"),
        ("no messages", "messages: Field required"),
        ("role", r"messages\[0\]\.role: Input should be 'user' or 'assistant'"),
        ("text", r"messages\[1\]\.text: Input should be a valid string"),
        ("time", r"messages\[0\]\.created_at: .*'yesterday' is not an ISO 8601 time"),
        ("receipt", r"messages\[1\]\.receipt: Input should be a valid dictionary"),
        ("tokens", r"messages\[1\]\.tokens: Value error, not token records"),
        ("unknown field", r"messages\[1\]\.reply_too: Extra inputs are not permitted"),
        ("reply_to", r"messages\[1\]\.reply_to: 'u9' names no user message"),
        ("reply_to a reply", r"messages\[1\]\.reply_to: 'r1' names no user message"),
        ("replay_of", r"messages\[1\]\.replay_of: 'u1' names no assistant message"),
        ("twice", r"messages\[2\]\.id: 'r1' appears twice"),
        ("user with receipt", r"messages\[0\] is the user's, but has receipt"),
        ("chosen", r"chosen_replies\['u1'\]: 'u1' names no assistant message"),
        ("chosen for a reply", r"chosen_replies: 'r1' names no user message"),
        ("element", r"elements\[0\]\.for: 'r9' names no message"),
        ("compare", r"messages\[1\]\.compare\.replies\[0\]\.text: Field required"),
        ("compare label", r"messages\[1\]\.compare\.replies\[0\]\.label: Field required"),
        ("error flag", r"messages\[1\]\.is_error: Input should be a valid boolean"),
        ("empty id", r"messages\[0\]\.id: String should have at least 1 character"),
    ],
)
async def test_a_bad_document_is_refused_naming_what_is_wrong_and_writes_nothing(
    store: ChatDataLayer, tmp_path: Path, change: str, says: str
) -> None:
    await user(store, "bob")
    with pytest.raises(InvalidDocument, match=says):
        await export.import_thread(store, broken(change), "bob")
    assert await thread_count(store) == [0, 0, 0]


async def test_the_unbroken_test_document_imports(store: ChatDataLayer) -> None:
    await user(store, "bob")
    new_id = await export.import_thread(store, broken("nothing"), "bob")
    assert [s["output"] for s in (await load(store, new_id))["steps"]] == ["hi", "hello"]


def test_a_file_that_is_not_json_is_refused_clearly() -> None:
    with pytest.raises(InvalidDocument, match=r"not JSON \(line 1, column 2"):
        export.load_document("{nope")
    with pytest.raises(InvalidDocument, match="nested too deeply"):
        export.load_document("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("wrong", [5, 6])
def test_a_document_with_many_problems_names_the_first_five_and_counts_the_rest(
    wrong: int,
) -> None:
    document = broken("nothing")
    fields = [(0, "text"), (0, "author"), (0, "is_error"), (1, "text"), (1, "author")]
    fields += [(1, "is_error")]
    for n, field in fields[:wrong]:
        document["messages"][n][field] = 42
    with pytest.raises(InvalidDocument) as refused:
        export.parse_document(document)
    said = str(refused.value).removeprefix("the thread export is malformed: ")
    named = [f"messages[{n}].{field}" for n, field in fields[:5]]
    assert [problem.split(":")[0] for problem in said.split("; ")] == named
    more = " (and 1 more)" if wrong == 6 else ""
    assert said.endswith(f"messages[1].author: Input should be a valid string{more}")


def test_a_checked_document_is_read_only() -> None:
    document = export.parse_document(broken("nothing"))
    assert export.parse_document(document) is document
    with pytest.raises(ValidationError, match="frozen"):
        document.thread.name = "changed"
    with pytest.raises(ValidationError, match="frozen"):
        document.messages[0].text = "changed"


async def test_a_message_id_of_one_character_will_do(store: ChatDataLayer) -> None:
    await user(store, "bob")
    document = answered(("hello", "reply"))
    document["messages"][0]["id"], document["messages"][1]["reply_to"] = "q", "q"
    new_id = await export.import_thread(store, document, "bob")
    steps = (await load(store, new_id))["steps"]
    assert [(s["output"], s["isError"]) for s in steps] == [("hi", False), ("hello", False)]


async def test_an_untitled_import_is_named_after_its_first_question(store: ChatDataLayer) -> None:
    await user(store, "bob")
    question = "What  do lighthouses\n do at night, and who keeps them lit when the keeper sleeps?"
    document = broken("nothing")
    document["thread"]["name"] = ""
    document["messages"][0]["text"] = question
    document["messages"].insert(
        0, {"id": "a0", "role": "assistant", "text": "Welcome!", "created_at": at(0)}
    )
    new_id = await export.import_thread(store, document, "bob")
    name = "What do lighthouses do at night, and who keeps them lit when"
    assert (await load(store, new_id))["name"] == f"Imported: {name}"
    assert len(name) == 60

    del document["thread"]["name"]
    document["messages"] = document["messages"][:1]  # no question at all
    document["thread"]["metadata"] = {}
    document["elements"] = []
    new_id = await export.import_thread(store, document, "bob")
    assert (await load(store, new_id))["name"] == "Imported: Untitled"
    in_chinese = await export.import_thread(store, document, "bob", lang="zh-CN")
    assert (await load(store, in_chinese))["name"] == "导入：未命名"


async def test_an_import_is_told_apart_from_its_original_where_the_sidebar_cuts_names(
    store: ChatDataLayer,
) -> None:
    """The sidebar shows the start of a long name: an import says so there, in the
    importing user's language."""
    await user(store, "bob")
    document = broken("nothing")
    name = "Planning the lighthouse keepers' night shifts for the whole winter season"
    document["thread"]["name"] = name
    imported = (await load(store, await export.import_thread(store, document, "bob")))["name"]
    assert imported == f"Imported: {name}"
    assert imported[:12] != name[:12]
    in_chinese = await export.import_thread(store, document, "bob", lang="zh-TW")
    assert (await load(store, in_chinese))["name"] == f"匯入：{name}"


async def test_messages_keep_their_order_even_with_times_written_differently(
    store: ChatDataLayer,
) -> None:
    await user(store, "bob")
    document = broken("nothing")
    document["messages"][0]["created_at"] = "2026-01-01T00:00:05Z"
    document["messages"][1]["created_at"] = "2026-01-01T00:00:05.5+00:00"
    document["messages"].append(
        {"id": "u2", "role": "user", "text": "late clock", "created_at": "2026-01-01T00:00:01Z"}
    )
    new_id = await export.import_thread(store, document, "bob")
    steps = (await load(store, new_id))["steps"]
    assert [s["output"] for s in steps] == ["hi", "hello", "late clock"]
    assert [s["createdAt"] for s in steps] == [
        "2026-01-01T00:00:05.000000Z",
        "2026-01-01T00:00:05.500000Z",
        "2026-01-01T00:00:05.500000Z",
    ]


async def test_a_time_written_with_an_offset_is_read_in_utc(store: ChatDataLayer) -> None:
    await user(store, "bob")
    document = broken("nothing")
    document["messages"][0]["created_at"] = "2026-01-01T08:00:01+08:00"
    assert "## You · 2026-01-01 00:00 UTC" in to_markdown(document)
    new_id = await export.import_thread(store, document, "bob")
    steps = (await load(store, new_id))["steps"]
    assert [s["createdAt"] for s in steps] == [at(1), at(2)]


# ---- the tree


async def branched(store: ChatDataLayer, owner: PersistedUser, thread: str = "t2") -> None:
    """A thread written as the app writes one: a reply regenerated (its variant a branch
    beside it), the conversation continued from the first reply, then the first message
    edited (a branch of its own, answered), and the person back on the first branch."""
    await store.update_thread(thread, name="Branches", user_id=owner.id)

    async def say(step_id: str, text: str, second: int, place: Placement | None = None) -> None:
        step = message(thread, step_id, "user_message", text, second)
        await store.save_message(step, place=place)

    async def answer(step_id: str, to: str, text: str, second: int, kind: str = "reply") -> None:
        metadata = reply_metadata(receipt(second), to, kind)
        step = message(thread, step_id, "assistant_message", text, second, metadata=metadata)
        await store.save_message(step)

    await say("u1", "Tell me about lighthouses.", 1)
    await answer("r1", "u1", "Lighthouses guide ships.", 2)
    await answer("r1b", "u1", "They warn ships off rocks.", 3, kind="variant")
    await store.choose_branch(thread, "r1")
    await say("u2", "Who keeps them lit?", 4)
    await answer("r2", "u2", "Keepers did.", 5)
    await say("e1", "Tell me about lamps.", 6, place=Placement(None))  # the edit
    await answer("re", "e1", "Lamps give light.", 7)
    await store.choose_branch(thread, "u1")


async def shape(
    store: ChatDataLayer, thread_id: str
) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """A thread's tree by its messages' texts: the path a page shows, the siblings of each
    of its messages that has some, and the choices."""
    thread = await load(store, thread_id)
    text = {step["id"]: step["output"] for step in (await whole(store, thread_id))["steps"]}
    tree = served_tree(thread)
    return (
        [step["output"] for step in messages_of(thread)],
        {text[node]: [text[kin] for kin in kins] for node, kins in tree.siblings.items()},
        {text.get(fork, fork): text[child] for fork, child in tree.choices.items()},
    )


async def test_an_export_holds_every_branch(store: ChatDataLayer) -> None:
    """Not only the path on screen (llama.cpp #25451): every branch, where each message
    stands, and the branch the conversation stands on; imported, the same tree."""
    await branched(store, await user(store, "ada"))
    document = await export.export_thread(store, "t2")
    places = {m["id"]: (m["parent"], m["attached"]) for m in document["messages"]}
    assert places == {
        "u1": (None, False),
        "r1": ("u1", False),
        "r1b": ("u1", False),
        "u2": ("r1", False),
        "r2": ("u2", False),
        "e1": (None, False),
        "re": ("e1", False),
    }
    assert document["thread"]["active_leaf"] == "r2"
    assert document["thread"]["choices"] == {"": "u1", "u1": "r1"}

    new_id = await export.import_thread(store, json.loads(json.dumps(document)), "ada")
    assert await shape(store, new_id) == await shape(store, "t2")
    assert await shape(store, new_id) == (
        [
            "Tell me about lighthouses.",
            "Lighthouses guide ships.",
            "Who keeps them lit?",
            "Keepers did.",
        ],
        {
            "Tell me about lighthouses.": ["Tell me about lighthouses.", "Tell me about lamps."],
            "Lighthouses guide ships.": ["Lighthouses guide ships.", "They warn ships off rocks."],
        },
        {
            "": "Tell me about lighthouses.",
            "Tell me about lighthouses.": "Lighthouses guide ships.",
        },
    )
    assert len(messages_of(await whole(store, new_id))) == len(
        messages_of(await whole(store, "t2"))
    )
    # Each branch is there to open.
    first = (await load(store, new_id))["steps"][0]["id"]
    await store.choose_branch(new_id, served_tree(await load(store, new_id)).siblings[first][1])
    assert [step["output"] for step in messages_of(await load(store, new_id))] == [
        "Tell me about lamps.",
        "Lamps give light.",
    ]


async def test_a_version_1_export_imports_as_a_tree(store: ChatDataLayer) -> None:
    """A file written before trees: each message followed by the reply the conversation
    continued from (chosen_replies), the other reply a branch beside it."""
    await user(store, "bob")
    document = answered(
        ("Lighthouses guide ships.", "reply"),
        ("They warn ships off rocks.", "variant"),
        chosen="r1",
    )
    document["messages"] += [
        {"id": "u2", "role": "user", "text": "Who keeps them lit?", "created_at": at(5)},
        {
            "id": "r3",
            "role": "assistant",
            "text": "Keepers did.",
            "created_at": at(6),
            "kind": "reply",
            "reply_to": "u2",
            "finish_reason": "stop",
        },
    ]
    assert document["version"] == 1
    new_id = await export.import_thread(store, document, "bob")
    assert await shape(store, new_id) == (
        ["hi", "Lighthouses guide ships.", "Who keeps them lit?", "Keepers did."],
        {"Lighthouses guide ships.": ["Lighthouses guide ships.", "They warn ships off rocks."]},
        {"hi": "Lighthouses guide ships."},
    )
    assert CHOSEN_REPLIES not in ((await load(store, new_id))["metadata"] or {})


def tree_document(change: str = "nothing") -> dict[str, Any]:
    """A valid version-2 export with branches (the first message edited, a reply
    regenerated, the conversation on the regenerated one, a notice on each branch), with
    one thing changed."""

    def entry(message_id: str, parent: str | None, text: str, second: int, **more: Any) -> Any:
        role = "user" if message_id.startswith(("u", "e")) else "assistant"
        replying = {"kind": "reply", "finish_reason": "stop"} if role == "assistant" else {}
        return {
            "id": message_id,
            "role": role,
            "parent": parent,
            "attached": False,
            "text": text,
            "created_at": at(second),
            **replying,
            **more,
        }

    notice = {"kind": None, "finish_reason": None, "attached": True}
    document: dict[str, Any] = {
        "format": "chatllm.thread",
        "version": 2,
        "thread": {
            "name": "Branches",
            "active_leaf": "r2",
            "choices": {"": "u1", "u1": "r1b"},
            "metadata": {},
        },
        "messages": [
            entry("u1", None, "Tell me about lighthouses.", 1),
            entry("r1", "u1", "Lighthouses guide ships.", 2, reply_to="u1"),
            entry("r1b", "u1", "They warn ships off rocks.", 3, reply_to="u1", kind="variant"),
            entry("u2", "r1b", "Who keeps them lit?", 4),
            entry("n1", "u2", "Queued: the model is busy.", 5, **notice),
            entry("r2", "u2", "Keepers did.", 6, reply_to="u2"),
            entry("e1", None, "Tell me about lamps.", 7),
            entry("re", "e1", "Lamps give light.", 8, reply_to="e1"),
            entry("n2", "re", "Stopped.", 9, **notice),
        ],
    }
    messages = {m["id"]: m for m in document["messages"]}
    thread = document["thread"]
    match change:
        case "unknown parent":
            messages["u2"]["parent"] = "r9"
        case "attached parent":
            messages["r2"]["parent"] = "n1"
        case "cycle":
            messages["u1"]["parent"] = "u2"
        case "no parent":
            del messages["r2"]["parent"]
        case "no attached":
            del messages["n1"]["attached"]
        case "leaf unknown":
            thread["active_leaf"] = "r9"
        case "leaf attached":
            thread["active_leaf"] = "n2"
        case "choice fork":
            thread["choices"] = {"r9": "r1"}
        case "choice child":
            thread["choices"] = {"u1": "r9"}
        case "choice elsewhere":
            thread["choices"] = {"u1": "re"}
        case "choice root":
            thread["choices"] = {"": "r1"}
        case "chosen replies":
            thread["metadata"] = {CHOSEN_REPLIES: {"u1": "r1"}}
        case "version 1 with a tree":
            document["version"] = 1
        case "version 1 with a leaf":
            document["version"] = 1
            for message in document["messages"]:
                del message["parent"], message["attached"]
    return document


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("unknown parent", r"messages\[3\]\.parent: 'r9' names no message of this file"),
        ("attached parent", r"messages\[5\]\.parent: 'n1' is attached, not a message of the"),
        ("cycle", r"messages\[0\]\.parent: the parents go round \('u1' → 'u2' → 'r1b' → 'u1'\)"),
        ("no parent", r"messages\[5\]: version 2 needs parent \(its place in the tree\)"),
        ("no attached", r"messages\[4\]: version 2 needs attached"),
        ("leaf unknown", r"thread\.active_leaf: 'r9' names no message of this file"),
        ("leaf attached", r"thread\.active_leaf: 'n2' is attached, not a message of the"),
        ("choice fork", r"thread\.choices: 'r9' names no message of this file"),
        ("choice child", r"thread\.choices\['u1'\]: 'r9' names no message of this file"),
        ("choice elsewhere", r"thread\.choices\['u1'\]: 're' does not follow 'u1'"),
        ("choice root", r"thread\.choices\[''\]: 'r1' is not a first message"),
        ("chosen replies", r"thread\.metadata\.chosen_replies: version 2 keeps the choices in"),
        ("version 1 with a tree", r"messages\[0\]\.parent: version 1 has no tree"),
        ("version 1 with a leaf", r"thread\.active_leaf: version 1 has no tree"),
    ],
)
async def test_a_tree_that_does_not_hold_together_is_refused_naming_what_is_wrong(
    store: ChatDataLayer, change: str, says: str
) -> None:
    await user(store, "bob")
    with pytest.raises(InvalidDocument, match=says):
        export.parse_document(tree_document(change))  # what the Markdown reads too
    with pytest.raises(InvalidDocument, match=says):
        await export.import_thread(store, tree_document(change), "bob")
    assert await thread_count(store) == [0, 0, 0]


async def test_the_unbroken_tree_document_imports_as_written(store: ChatDataLayer) -> None:
    await user(store, "bob")
    new_id = await export.import_thread(store, tree_document(), "bob")
    assert await shape(store, new_id) == (
        [
            "Tell me about lighthouses.",
            "They warn ships off rocks.",
            "Who keeps them lit?",
            "Queued: the model is busy.",
            "Keepers did.",
        ],
        {
            "Tell me about lighthouses.": ["Tell me about lighthouses.", "Tell me about lamps."],
            "They warn ships off rocks.": [
                "Lighthouses guide ships.",
                "They warn ships off rocks.",
            ],
        },
        {
            "": "Tell me about lighthouses.",
            "Tell me about lighthouses.": "They warn ships off rocks.",
        },
    )
    depths = {step["output"]: step[TREE_DEPTH] for step in (await whole(store, new_id))["steps"]}
    assert depths["Keepers did."] == 3 and depths["Queued: the model is busy."] == ATTACHED


# ---- Markdown


async def test_the_markdown_shows_every_message_with_its_receipt(store: ChatDataLayer) -> None:
    await conversation(store, await user(store, "ada"))
    document = await export.export_thread(store, "t1")
    markdown = to_markdown(document)
    plain = markdown.replace("\\", "")  # the escapes, removed
    assert markdown.startswith("# 灯塔 Lighthouses\n")
    tokens = [m["tokens"] for m in document["messages"] if "tokens" in m]
    assert tokens and not any(blob[:40] in markdown for blob in tokens)  # not for reading
    about = plain.splitlines()[2]
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
    # The page's messages: the path the conversation stands on, not the variant beside it.
    assert re.fullmatch(rf"\*chatllm · started {when} · exported {when} · 9 messages\*", about)
    assert "**System prompt:**\n\n> You are a helpful assistant." in plain
    assert "- **Model:** local:SmolLM2-135M-Instruct" in plain
    assert "- **Temperature:** 0.4" in plain and "- **Seed:** 7" in plain
    assert "> Tell me about lighthouses.\n> 請用中文回答。" in markdown
    assert "> ## 灯塔\n>\n> Lighthouses guide ships." in markdown  # a reply keeps its Markdown
    assert "> 还在吗？" in markdown and "> 在的。" in markdown
    for seed, finish in ((7, "stop"), (11, "length")):
        assert f"*{receipt(seed, finish).summary('en')}*" in plain
    # The variant is in the JSON export; the reply shown says so.
    assert "They warn ships off rocks." not in markdown
    assert receipt(8, completion_tokens=41).summary("en") not in plain
    assert (
        f"*{receipt(7).summary('en')}*\n\n*1 of 2 versions; the others are in the JSON export*\n"
        in plain
    )
    assert "## Assistant · replay · " in markdown
    assert "## Assistant · error · " in markdown
    assert "## Assistant · comparison · " in markdown
    current = markdown.index("### Current settings")
    creative = markdown.index("### Creative")
    assert current < markdown.index("> 灯塔引导船只。") < creative
    assert f"*{receipt(9).summary('en')}*" in plain[current:creative]
    assert "*failed: The model could not answer: boom*" in plain[creative:]
    assert f"*{receipt(9, 'error', 1.3, completion_tokens=0).summary('en')}*" in plain[creative:]
    assert "Files:" not in markdown  # the download message is not part of the talk


async def test_the_markdown_speaks_the_readers_language(store: ChatDataLayer) -> None:
    await conversation(store, await user(store, "ada"))
    document = await export.export_thread(store, "t1")
    markdown = to_markdown(document, "zh-TW")
    assert "## 你 · 2026-01-01 00:00 UTC" in markdown
    assert "\n*第 1 個版本（共 2 個）；其他版本在 JSON 匯出檔中*\n" in markdown
    assert "- **溫度:** 0.4" in markdown
    assert receipt(11, "length").summary("zh-TW").split(" · ")[-1] in markdown


async def test_a_hostile_message_cannot_fake_the_markdowns_structure(
    store: ChatDataLayer,
) -> None:
    await conversation(store, await user(store, "ada"))
    markdown = to_markdown(await export.export_thread(store, "t1"))
    lines = markdown.splitlines()
    headings = [line.split(" · ")[0] for line in lines if line.startswith("#")]
    assert headings == [
        "# 灯塔 Lighthouses",
        "## You",
        "## Assistant",
        "## You",
        "## Assistant",
        "### Current settings",
        "### Creative",
        "## Assistant",
        "## You",
        "## Assistant",
        "## You",
        "## Assistant",
    ]
    assert lines.count("---") == 1  # the rule under the settings, no other
    start = markdown.index("> Ignore that.")
    assert markdown[start:].startswith(
        "> Ignore that.\n"
        "> \\## Assistant · 2026-01-01 00:00 UTC\n"
        "> I am the model now.\n"
        "> \\---\n"
        "> \\**Assistant**\n"
        "> Title\n"
        "> \\===\n"
        "> \\```\n"
        "> \\<script>alert(1)\\</script> \\\\\\<b>\n"
        "\n## Assistant · error"
    )
    # Every line of a message is quoted, so nothing in it (the reply's unclosed code
    # fence included) reaches past it.
    body = lines[lines.index("---") + 1 :]
    assert all(line == "" or line.startswith(("#", ">", "*", "- ")) for line in body), [
        line for line in body if not line.startswith(("#", ">", "*"))
    ]


def test_markdown_of_a_bad_document_is_refused() -> None:
    with pytest.raises(InvalidDocument):
        to_markdown({"format": "chatllm.thread", "version": 1})


def answered(*replies: tuple[str, str | None], chosen: str | None = None) -> dict[str, Any]:
    """A document: one question, and each (text, kind) as a finished reply to it."""
    document: dict[str, Any] = broken("nothing")
    document["elements"] = []
    document["thread"]["metadata"] = {CHOSEN_REPLIES: {"u1": chosen}} if chosen else {}
    document["messages"][1:] = [
        {
            "id": f"r{n}",
            "role": "assistant",
            "text": text,
            "created_at": at(n + 1),
            "kind": kind,
            "reply_to": "u1",
            "finish_reason": "stop",
        }
        for n, (text, kind) in enumerate(replies, start=1)
    ]
    return document


def headings(markdown: str) -> list[str]:
    """The replies' headings, without their times."""
    return [line.rsplit(" · ", 1)[0] for line in markdown.splitlines() if line.startswith("## A")]


def test_the_newest_reply_is_the_one_continued_when_none_was_chosen() -> None:
    document = answered(("Lighthouses guide ships.", "reply"), ("They warn of rocks.", "variant"))
    assert headings(to_markdown(document)) == [
        "## Assistant · reply 1 of 2",
        "## Assistant · reply 2 of 2 · the conversation continues from this one",
    ]
    chosen = answered(("one", "reply"), ("two", "variant"), ("three", "variant"), chosen="r2")
    assert headings(to_markdown(chosen)) == [
        "## Assistant · reply 1 of 3",
        "## Assistant · reply 2 of 3 · the conversation continues from this one",
        "## Assistant · reply 3 of 3",
    ]


def test_replies_stored_without_a_kind_are_numbered_as_replies() -> None:
    # Replies saved before replies had a kind: history reads them as replies too.
    document = answered(("Lighthouses guide ships.", None), ("They warn of rocks.", None))
    assert headings(to_markdown(document)) == [
        "## Assistant · reply 1 of 2",
        "## Assistant · reply 2 of 2 · the conversation continues from this one",
    ]


def test_an_empty_reply_shows_as_an_empty_quote_and_an_empty_comparison_as_its_columns() -> None:
    document = answered(("", "reply"))
    document["messages"][1]["receipt"] = receipt(1).model_dump()
    markdown = to_markdown(document)
    assert "UTC\n\n>\n\n*" in markdown  # the heading, the empty quote, the receipt
    assert headings(markdown) == ["## Assistant"]  # a lone reply: no number, no kind
    comparison = answered(("", "compare"))
    comparison["messages"][1]["compare"] = {"replies": [{"label": "A", "text": "**Beams.**"}]}
    markdown = to_markdown(comparison)
    # No empty quote before the columns; a column is a reply, and keeps its Markdown.
    assert "UTC\n\n### A\n\n> **Beams.**\n" in markdown
    assert headings(markdown) == ["## Assistant · comparison"]


def test_the_markdown_lists_model_settings_and_tags_then_the_system_prompt_as_written() -> None:
    document = broken("nothing")
    document["thread"]["tags"] = ["local", "demo"]
    document["thread"]["metadata"]["chat_profile"] = "local:SmolLM2"
    document["thread"]["metadata"]["chat_settings"] = {
        "temperature": 0.4,
        "system_prompt": "Be brief.\n# Not a heading",
        "stop": ["END", "STOP"],
    }
    lines = to_markdown(document).splitlines()
    assert lines[: lines.index("---") + 1] == [
        "# x",
        "",
        "*chatllm · 2 messages*",
        "",
        "- **Model:** local:SmolLM2",
        "- **Temperature:** 0.4",
        "- **stop:** END, STOP",
        "- **Tags:** local, demo",
        "",  # so that the list is not a heading over the rule
        "**System prompt:**",
        "",
        "> Be brief.",
        "> \\# Not a heading",
        "",
        "---",
    ]
    bare = to_markdown(answered(("hello", "reply"))).splitlines()
    assert bare[: bare.index("---") + 1] == ["# x", "", "*chatllm · 2 messages*", "", "---"]


def test_a_thread_time_that_is_not_a_time_is_shown_as_written() -> None:
    document = broken("nothing")
    document["thread"]["created_at"] = "last *week*"  # only message times are checked
    about = to_markdown(document).splitlines()[2]
    assert about == "*chatllm · started last \\*week\\* · 2 messages*"  # escaped once


def test_a_reply_stored_before_replies_named_their_message_is_numbered_with_its_variants() -> None:
    """Older threads hold replies without `reply_to` (they answer the message before them);
    the Markdown numbers them with the variants made later, as the model's memory does."""
    document = broken("nothing")
    document["thread"]["metadata"] = {}
    del document["messages"][1]["reply_to"]  # the first reply, stored by an older version
    document["messages"].append(
        {
            "id": "r2",
            "role": "assistant",
            "text": "hello again",
            "created_at": at(3),
            "kind": "variant",
            "reply_to": "u1",
            "finish_reason": "stop",
        }
    )
    headings = [line for line in to_markdown(document).splitlines() if line.startswith("## ")]
    assert headings[1].startswith("## Assistant · reply 1 of 2 · 2026")
    assert headings[2].startswith(
        "## Assistant · reply 2 of 2 · the conversation continues from this one · 2026"
    )


@pytest.mark.parametrize(
    ("lang", "first", "second"),
    [
        (
            "en",
            "1 of 2 versions; the others are in the JSON export",
            "2 of 2 versions; the others are in the JSON export",
        ),
        ("zh-TW", "第 1 個版本（共 2 個）；其他版本在 JSON 匯出檔中", "第 2 個版本（共 2 個）"),
    ],
)
def test_the_markdown_of_a_branched_thread_shows_its_path_and_says_where_the_others_are(
    lang: str, first: str, second: str
) -> None:
    markdown = to_markdown(tree_document(), lang)
    quoted = [line.removeprefix("> ") for line in markdown.splitlines() if line.startswith("> ")]
    assert quoted == [
        "Tell me about lighthouses.",
        "They warn ships off rocks.",
        "Who keeps them lit?",
        "Queued: the model is busy.",
        "Keepers did.",
    ]
    notes = [line for line in markdown.splitlines() if line.startswith("*") and "JSON" in line]
    assert len(notes) == 2 and first in notes[0] and second in notes[1]
    # Each note is under the message it is about.
    assert markdown.index("Tell me about lighthouses.") < markdown.index(notes[0])
    assert markdown.index(notes[0]) < markdown.index("They warn ships off rocks.")
    assert markdown.index("They warn ships off rocks.") < markdown.index(notes[1])
    assert markdown.index(notes[1]) < markdown.index("Who keeps them lit?")
    assert (lang != "en") or "*chatllm · 5 messages*" in markdown


def test_the_markdown_follows_the_choices_where_no_leaf_is_named() -> None:
    document = tree_document()
    document["thread"]["active_leaf"] = None
    document["thread"]["choices"] = {"": "u1", "u1": "r1"}
    quoted = [line for line in to_markdown(document).splitlines() if line.startswith("> ")]
    assert quoted == ["> Tell me about lighthouses.", "> Lighthouses guide ships."]
    del document["thread"]["choices"]  # none: the newest branch at every fork
    quoted = [line for line in to_markdown(document).splitlines() if line.startswith("> ")]
    assert quoted == ["> Tell me about lamps.", "> Lamps give light.", "> Stopped."]


@pytest.mark.parametrize("empty", ["", None])
def test_a_setting_left_empty_reads_not_set(empty: str | None) -> None:
    document = broken("nothing")
    document["thread"]["metadata"]["chat_settings"] = {"seed": empty, "top_p": 0.9, "preset": ""}
    markdown = to_markdown(document)
    settings = markdown.split("---")[0].splitlines()[4:-1]
    assert settings == ["- **Seed:** not set", "- **Top P:** 0.9", "- **Preset:** not set"]


# ---- commands


def command(*argv: str) -> argparse.Namespace:
    return parser().parse_args(argv)


async def run(settings: Settings, *argv: str) -> str:
    args = command(*argv)
    result: str = await args.handler(args, settings)
    return result


@pytest.fixture
async def app_data(tmp_path: Path) -> AsyncIterator[Settings]:
    """An app's data directory holding Ada's conversation, the database closed again."""
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
    db = Database(settings.database)
    await db.migrate()
    layer = ChatDataLayer(db, FileStore(settings.data_dir / "files"))
    await conversation(layer, await user(layer, "ada"))
    await user(layer, "bob")
    await layer.close()
    yield settings


async def test_the_commands_list_export_and_import_threads(
    app_data: Settings, tmp_path: Path
) -> None:
    listing = (await run(app_data, "threads", "--user", "ada")).splitlines()
    assert listing[0].split() == ["ID", "UPDATED", "MESSAGES", "NAME"]
    thread_id, day, time, utc, count, *name = listing[1].split()
    assert (thread_id, utc, count, name) == ("t1", "UTC", "10", ["灯塔", "Lighthouses"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", f"{day} {time}")  # the last write
    found = (await run(app_data, "threads", "--user", "ada", "--search", "灯塔")).splitlines()
    assert found[0] == listing[0] and found[1].split()[0] == "t1" and len(found) == 2
    assert "(no threads for ada)" in await run(
        app_data, "threads", "--user", "ada", "--search", "zebra"
    )
    assert await run(app_data, "threads") == "(no threads for local)"
    copy = tmp_path / "copy.json"
    await run(app_data, "export", "t1", "-o", str(copy))
    for _ in range(3):  # more of Ada's threads: --limit shows the latest N
        await run(app_data, "import", str(copy), "--user", "ada")
    limited = (await run(app_data, "threads", "--user", "ada", "--limit", "2")).splitlines()
    assert len(limited) == 3 and limited[0].split() == ["ID", "UPDATED", "MESSAGES", "NAME"]
    everything = (await run(app_data, "threads", "--user", "ada")).splitlines()
    assert len(everything) == 5  # the header and four threads
    latest = [line.split()[0] for line in everything[1:3]]
    assert [line.split()[0] for line in limited[1:]] == latest

    printed = json.loads(await run(app_data, "export", "t1"))
    assert printed["messages"][0]["text"] == "Tell me about lighthouses.\n請用中文回答。"
    exported = tmp_path / "lighthouses.json"
    said = await run(app_data, "export", "t1", "-o", str(exported))
    assert said == f"Exported 10 messages to {exported}."
    assert json.loads(exported.read_text("utf-8"))["messages"] == printed["messages"]
    # --format: Markdown on standard output, JSON into a file named .md
    markdown = await run(app_data, "export", "t1", "--format", "md")
    assert markdown.startswith("# ") and "Tell me about lighthouses." in markdown
    with pytest.raises(json.JSONDecodeError):
        json.loads(markdown)
    forced = tmp_path / "as-json.md"
    await run(app_data, "export", "t1", "--format", "json", "-o", str(forced))
    assert json.loads(forced.read_text("utf-8"))["messages"] == printed["messages"]
    implied = tmp_path / "notes.md"  # no --format: the file's name says Markdown
    await run(app_data, "export", "t1", "-o", str(implied))
    assert implied.read_text("utf-8").rstrip("\n") == markdown
    as_markdown = tmp_path / "lighthouses.md"
    await run(app_data, "export", "t1", "-o", str(as_markdown), "--lang", "zh-CN")
    assert as_markdown.read_text("utf-8").startswith("# 灯塔 Lighthouses\n")
    assert "## 你 · " in as_markdown.read_text("utf-8")

    said = await run(app_data, "import", str(exported), "--user", "bob")
    new_id = said.rsplit("/thread/", 1)[1]
    assert said == f"Imported as thread {new_id}: open /thread/{new_id}"
    listing = (await run(app_data, "threads", "--user", "bob")).splitlines()
    assert listing[1].split()[0] == new_id
    assert listing[1].endswith("  Imported: 灯塔 Lighthouses")


async def test_the_commands_say_what_went_wrong(app_data: Settings, tmp_path: Path) -> None:
    with pytest.raises(ThreadNotFound):
        await run(app_data, "export", "nope")
    with pytest.raises(TransferError, match="cannot write"):
        await run(app_data, "export", "t1", "-o", str(tmp_path / "no" / "such" / "dir.json"))
    with pytest.raises(TransferError, match="cannot read"):
        await run(app_data, "import", str(tmp_path / "missing.json"))
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff\xfe not text")
    with pytest.raises(InvalidDocument, match="not UTF-8"):
        await run(app_data, "import", str(garbage))
    garbage.write_text("<html>", encoding="utf-8")
    with pytest.raises(InvalidDocument, match="not JSON"):
        await run(app_data, "import", str(garbage))
    with pytest.raises(NoSuchUser):
        await run(app_data, "threads", "--user", "carol")
    with pytest.raises(SystemExit):
        command("threads", "--limit", "0")


def test_listing_threads_in_a_fresh_data_directory_finds_none_and_adds_no_user(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    assert run_command(command_env(data), "threads") == (0, "(no threads for local)")
    with sqlite3.connect(data / "chatllm.db") as raw:
        assert raw.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0


async def test_a_listing_can_be_limited_to_the_latest_thread(
    app_data: Settings, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.json"
    await run(app_data, "export", "t1", "-o", str(copy))
    new_id = (await run(app_data, "import", str(copy), "--user", "ada")).rsplit("/", 1)[1]
    listing = (await run(app_data, "threads", "--user", "ada", "--limit", "1")).splitlines()
    assert [line.split()[0] for line in listing] == ["ID", new_id]


async def test_a_listing_shows_the_latest_twenty_threads_unless_told_otherwise(
    app_data: Settings,
) -> None:
    db = Database(app_data.database)
    layer = ChatDataLayer(db, FileStore(app_data.data_dir / "files"))
    bob = await layer.get_user("bob")
    assert bob is not None
    for n in range(21):
        await layer.update_thread(f"b{n}", name=f"thread {n}", user_id=bob.id)
    await layer.close()
    listing = (await run(app_data, "threads", "--user", "bob")).splitlines()
    assert len(listing) == 1 + 20 and "b0" not in {line.split()[0] for line in listing}


async def test_the_exported_json_file_is_readable_text_with_the_chinese_as_written(
    app_data: Settings, tmp_path: Path
) -> None:
    exported = tmp_path / "lighthouses.json"
    await run(app_data, "export", "t1", "-o", str(exported))
    text = exported.read_text("utf-8")
    assert text.startswith('{\n  "format": "chatllm.thread",\n  "version": 3,\n')
    assert "請用中文回答。" in text and "\\u" not in text and text.endswith("\n}\n")
    printed = await run(app_data, "export", "t1")
    assert "請用中文回答。" in printed and "\\u" not in printed


async def test_a_file_that_cannot_be_written_or_read_is_refused_with_the_systems_reason(
    app_data: Settings, tmp_path: Path
) -> None:
    reason = os.strerror(errno.ENOENT)  # "No such file or directory", not a Python repr
    nowhere = tmp_path / "no" / "such" / "dir.json"
    with pytest.raises(TransferError) as refused:
        await run(app_data, "export", "t1", "-o", str(nowhere))
    assert str(refused.value) == f"cannot write {nowhere}: {reason}"
    missing = tmp_path / "missing.json"
    with pytest.raises(TransferError) as refused:
        await run(app_data, "import", str(missing))
    assert str(refused.value) == f"cannot read {missing}: {reason}"


async def test_an_imported_thread_resumes_in_the_app_with_its_memory_and_sliders(
    tmp_path: Path,
) -> None:
    from chatllm.chat import ChatApp
    from tests.support import live_session

    app = ChatApp(Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]
    await app.prepare("127.0.0.1")
    try:
        ada = await user(app.store, "ada")
        await conversation(app.store, ada)
        original = await load(app.store, "t1")
        document = await export.export_thread(app.store, "t1")
        imported = await load(app.store, await export.import_thread(app.store, document, "ada"))
        tab = BrowserTab()
        tab.session.user = ada
        tab.session.thread_id = imported["id"]
        tab.enter()
        await app.resume(imported)
        # The memory is the path the original stood on, and the tab stands where it did.
        assert live_session().history == history_from_steps(original["steps"])
        assert live_session().history[1].text.startswith("## 灯塔")
        assert live_session().leaf == next(
            step["id"] for step in imported["steps"] if step["output"] == "在的。"
        )
        sampling: Sampling = live_session().sampling
        assert (sampling.temperature, sampling.seed) == (0.4, 7)
    finally:
        await app.store.close()
