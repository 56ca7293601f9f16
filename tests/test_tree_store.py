"""The conversation tree in the store (issue 26), on SQLite and PostgreSQL: a regenerated
reply beside the one it replaces, the path a page is served, a switch saved at once and
found again, two tabs switching together, Chainlit's own writes and deletes moving or
destroying nothing, and a thread written before trees migrating with nothing lost."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from chainlit.element import CustomElement
from chainlit.types import Pagination, ThreadFilter
from chainlit.user import PersistedUser, User

from chatllm.conversation.marks import CHOSEN_REPLIES
from chatllm.conversation.memory import history_from_steps
from chatllm.conversation.tree import ATTACHED
from chatllm.store import ChatDataLayer, Database, FileStore, ThreadAccessDenied
from chatllm.store import db as db_module
from chatllm.store.migrations import MIGRATIONS
from chatllm.store.tree import BranchGone, BranchKept, Placement, StepKept, served_tree
from tests.support import BrowserTab


@pytest.fixture
async def ada(store: ChatDataLayer) -> PersistedUser:
    user = await store.create_user(User(identifier="ada"))
    assert user is not None
    return user


_clock = iter(range(10_000))


def at() -> str:
    return f"2026-05-01T10:{next(_clock) // 60 % 60:02d}:{next(_clock) % 60:02d}.000000Z"


def user_message(thread: str, step_id: str, text: str) -> Any:
    return {
        "id": step_id,
        "threadId": thread,
        "type": "user_message",
        "name": "User",
        "output": text,
        "createdAt": at(),
    }


def reply(thread: str, step_id: str, to: str, text: str, kind: str = "reply") -> Any:
    return {
        "id": step_id,
        "threadId": thread,
        "type": "assistant_message",
        "name": "chatllm",
        "output": text,
        "createdAt": at(),
        "metadata": {"kind": kind, "reply_to": to, "finish_reason": "stop"},
    }


async def talk(store: ChatDataLayer, user: PersistedUser, thread: str = "t1") -> None:
    """u1 r1 u2 r2, then r1 regenerated as v1 (u1 ─ r1 ─ u2 ─ r2, u1 ─ v1)."""
    await store.update_thread(thread, name="Tree", user_id=user.id)
    await store.save_message(user_message(thread, "u1", "Hello"))
    await store.save_message(reply(thread, "r1", "u1", "Hi."))
    await store.db.execute(
        "INSERT INTO elements (id, thread_id, step_id, type, name, display, props)"
        " VALUES ('e-r1', :thread, 'r1', 'custom', 'Receipt', 'inline', '{}')",
        {"thread": thread},
    )
    await store.save_message(user_message(thread, "u2", "A poem?"))
    await store.save_message(reply(thread, "r2", "u2", "Waves."))
    tab = BrowserTab()  # the elements of a message are written in a chat
    tab.session.user, tab.session.thread_id = user, thread
    tab.session.has_first_interaction = True
    tab.enter()
    await store.save_message(
        reply(thread, "v1", "u1", "Hello there!", kind="variant"),
        elements=[CustomElement(name="Receipt", props={"n": 1}, for_id="v1")],
    )


def ids(thread: Any) -> list[str]:
    return [s["id"] for s in thread["steps"]]


async def test_a_regenerated_reply_is_a_sibling_and_the_page_shows_its_path_alone(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await talk(store, ada)
    await store.save_message(
        {
            **reply("t1", "ignored", "u2", "x"),
            "id": "note",
            "type": "assistant_message",
            "metadata": {},
            "output": "A notice",
        }
    )
    thread = await store.get_thread("t1")
    assert thread is not None
    assert ids(thread) == ["u1", "v1", "note"]  # r1, u2 and r2 are a switch away
    tree = served_tree(thread)
    assert (tree.leaf, tree.active) == ("v1", "v1")
    assert tree.siblings == {"v1": ["r1", "v1"]}
    assert tree.choices == {"u1": "v1"}
    assert [e["forId"] for e in thread["elements"] or []] == ["v1"]
    whole = await store.whole_thread("t1")
    assert whole is not None and sorted(ids(whole)) == sorted(
        ["u1", "r1", "u2", "r2", "v1", "note"]
    )
    by_id = {s["id"]: s for s in whole["steps"]}
    assert (by_id["v1"]["treeParentId"], by_id["v1"]["treeDepth"]) == ("u1", 1)
    assert (by_id["u2"]["treeParentId"], by_id["u2"]["treeDepth"]) == ("r1", 2)
    assert (by_id["note"]["treeParentId"], by_id["note"]["treeDepth"]) == ("v1", ATTACHED)
    # A tab's own leaf: the other branch, with what hangs under it.
    # Search finds words on every branch, not only the one on screen.
    assert [t["id"] for t in await store.user_threads(ada.id, search="Waves")] == ["t1"]
    other = await store.thread_path("t1", "r2")
    assert other is not None and ids(other) == ["u1", "r1", "u2", "r2"]
    assert served_tree(other).siblings == {"r1": ["r1", "v1"]}


async def test_a_switch_is_saved_at_once_and_lands_where_the_person_was(
    store: ChatDataLayer, ada: PersistedUser, database_url: str, tmp_path: Path
) -> None:
    await talk(store, ada)
    change = await store.choose_branch("t1", "r1")
    assert change.leaf == "r2"  # the branch's end, not the message switched to
    reopened = ChatDataLayer(Database(database_url), FileStore(tmp_path / "files"))
    thread = await reopened.get_thread("t1")
    assert thread is not None and ids(thread) == ["u1", "r1", "u2", "r2"]
    # The model remembers the path on screen, and nothing of the other branch.
    memory = [m.content for m in history_from_steps(thread["steps"])]
    assert memory == ["Hello", "Hi.", "A poem?", "Waves."]
    # A message sent now follows the path shown.
    await reopened.save_message(user_message("t1", "u3", "Again"))
    whole = await reopened.whole_thread("t1")
    assert whole is not None
    assert {s["id"]: s["treeParentId"] for s in whole["steps"]}["u3"] == "r2"
    await reopened.choose_branch("t1", "v1")
    await reopened.choose_branch("t1", "r1")
    assert served_tree(await reopened.get_thread("t1") or {}).leaf == "u3"
    await reopened.close()


async def test_concurrent_switches_from_two_tabs_leave_a_consistent_state(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await talk(store, ada)
    asked = ["r1", "v1"] * 10
    await asyncio.gather(
        *(store.choose_branch("t1", node) for node in asked),
        store.save_message(user_message("t1", "u9", "Meanwhile")),
    )
    thread = await store.get_thread("t1")
    whole = await store.whole_thread("t1")
    assert thread is not None and whole is not None
    tree = served_tree(thread)
    parents = {s["id"]: s["treeParentId"] for s in whole["steps"]}
    children = [s for s, p in parents.items() if p == tree.leaf and s in ("u9", "r2", "u2")]
    assert tree.leaf in ("r2", "v1", "u9") and not children  # a leaf, the end of a path
    path = [s for s in ids(thread) if (s in parents and s != "u9") or s == tree.leaf]
    for fork, child in tree.choices.items():
        if fork in path:  # the saved choice at each fork on the path is the path's
            assert path[path.index(fork) + 1] == child


async def test_a_reply_ending_after_a_switch_away_does_not_pull_the_view_back(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await talk(store, ada)
    await store.save_message(user_message("t1", "u3", "Longer?"))  # on v1's branch
    await store.choose_branch("t1", "r1")  # another tab goes over while u3 is answered
    await store.save_message(reply("t1", "r3", "u3", "Sure."))
    assert served_tree(await store.get_thread("t1") or {}).leaf == "r2"
    # The tab that asked still finds its reply on its own path.
    mine = await store.thread_path("t1", "r3")
    assert mine is not None and ids(mine) == ["u1", "v1", "u3", "r3"]


async def test_a_message_sent_from_a_stale_tab_forks_where_that_tab_stood(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await talk(store, ada)
    # A tab still on r2 (before the regenerate) sends: its message follows r2.
    await store.save_message(user_message("t1", "u3", "Go on"), place=Placement("r2"))
    thread = await store.get_thread("t1")
    assert thread is not None and ids(thread) == ["u1", "r1", "u2", "r2", "u3"]
    assert served_tree(thread).choices == {"u1": "r1"}
    assert ids(await store.thread_path("t1", "v1") or {}) == ["u1", "v1"]


async def test_chainlit_writes_and_deletes_move_overwrite_and_destroy_nothing(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    """Chainlit's edit overwrites the edited message (`update_step`) and removes every
    later one (`delete_step`); a client may echo a step back with tree fields of its
    own. None of it changes the tree."""
    await talk(store, ada)
    await store.update_step(
        {**user_message("t1", "u2", "edited words"), "treeParentId": "v1", "treeDepth": 9}
    )
    for step_id in ("r2", "u2", "r1"):
        with pytest.raises(StepKept):
            await store.delete_step(step_id)
    whole = await store.whole_thread("t1")
    assert whole is not None and len(whole["steps"]) == 5
    u2 = {s["id"]: s for s in whole["steps"]}["u2"]
    assert (u2["output"], u2["treeParentId"], u2["treeDepth"]) == ("A poem?", "r1", 2)
    assert "treeParentId" not in json.loads(
        await store.db.value("SELECT extra FROM steps WHERE id = 'u2'")
    )
    # What is not a message of the conversation (a notice) still goes.
    await store.create_step({**reply("t1", "n1", "u1", "2 ahead"), "metadata": {}})
    await store.delete_step("n1")
    assert "n1" not in ids(await store.whole_thread("t1") or {})


async def test_a_notice_written_after_the_first_message_shows_where_it_was_made(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    """Chainlit writes what a new chat shows before its first message (a notice) only
    once that message is stored: it still comes first."""
    await store.update_thread("t1", name="Tree", user_id=ada.id)
    notice = {**reply("t1", "n0", "", "The endpoint is down"), "metadata": {}}
    await store.save_message(user_message("t1", "u1", "Hello"))
    await store.create_step(notice)
    thread = await store.get_thread("t1")
    assert thread is not None and ids(thread) == ["n0", "u1"]


# ---- a thread written before trees


def _old_rows(thread: str, user: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A thread as the release before trees stored it: u1, its run step, r1 and a variant
    v1 (chosen: "continue from this" on r1 after u2 was sent... here v1 is chosen), u2
    answered from v1, a replay of r1 (a reply left aside), a comparison, an error."""

    def row(sid: str, typed: str, output: str, parent: str | None = None, **meta: Any) -> Any:
        return {
            "id": sid,
            "thread_id": thread,
            "parent_id": parent,
            "type": typed,
            "name": "x",
            "input": "",
            "output": output,
            "is_error": None,
            "metadata": json.dumps(meta),
            "extra": "{}",
            "created_at": at(),
        }

    steps = [
        row("n0", "assistant_message", "Notice before the first message"),
        row("u1", "user_message", "Hello"),
        row("run1", "run", "", "u1"),
        row(
            "r1",
            "assistant_message",
            "Hi.",
            "run1",
            kind="reply",
            reply_to="u1",
            finish_reason="stop",
        ),
        row(
            "v1",
            "assistant_message",
            "Hello there!",
            None,
            kind="variant",
            reply_to="u1",
            finish_reason="stop",
        ),
        row("u2", "user_message", "A poem?"),
        row(
            "r2",
            "assistant_message",
            "Waves.",
            None,
            kind="reply",
            reply_to="u2",
            finish_reason="stop",
        ),
        row(
            "p1",
            "assistant_message",
            "**Replayed**",
            None,
            kind="replay",
            reply_to="u1",
            replay_of="r1",
        ),
        row("u3", "user_message", "Compare"),
        row("c1", "assistant_message", "", None, kind="compare", reply_to="u3"),
        row("e1", "assistant_message", "It failed"),
    ]
    metadata = {"chat_settings": {"temperature": 0.4}, CHOSEN_REPLIES: {"u1": "v1"}}
    return {"id": thread, "user_id": user, "metadata": json.dumps(metadata)}, steps


async def test_a_thread_written_before_trees_migrates_with_nothing_lost(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "MIGRATIONS", MIGRATIONS[:6])
    old = Database(database_url)
    await old.migrate()
    thread, steps = _old_rows("t1", "someone")
    async with old.write() as conn:
        from chatllm.store.dialect import sql

        await conn.execute(
            sql(
                "INSERT INTO threads (id, user_id, name, metadata, tags, created_at, updated_at)"
                " VALUES (:id, NULL, 'Old', :metadata, '[]', :now, :now)"
            ),
            {**thread, "now": "2026-05-01T09:00:00.000000Z"},
        )
        await conn.execute(
            sql(
                "INSERT INTO steps (id, thread_id, parent_id, type, name, input, output,"
                " is_error, metadata, extra, created_at, start_time, end_time) VALUES"
                " (:id, :thread_id, :parent_id, :type, :name, :input, :output, :is_error,"
                " :metadata, :extra, :created_at, :created_at, NULL)"
            ),
            steps,
        )
    before = [tuple(r) for r in await old.rows("SELECT * FROM steps ORDER BY seq")]
    listed = await old.value("SELECT updated_at FROM threads WHERE id = 't1'")
    old_memory = history_from_steps(
        [
            {
                "id": s["id"],
                "type": s["type"],
                "output": s["output"],
                "metadata": json.loads(s["metadata"]),
            }
            for s in steps
        ],
        {"u1": "v1"},
    )
    await old.close()

    monkeypatch.setattr(db_module, "MIGRATIONS", MIGRATIONS)
    db = Database(database_url)
    assert await db.migrate() == [m.name for m in MIGRATIONS[6:]]
    layer = ChatDataLayer(db, FileStore(tmp_path / "files"))
    after = [tuple(r)[: len(before[0])] for r in await db.rows("SELECT * FROM steps ORDER BY seq")]
    assert after == before  # every old column of every step as it was
    assert await db.value("SELECT updated_at FROM threads WHERE id = 't1'") == listed
    served = await layer.get_thread("t1")
    assert served is not None
    assert served["metadata"] == {"chat_settings": {"temperature": 0.4}}
    assert ids(served) == ["n0", "u1", "run1", "v1", "u2", "r2", "u3", "c1", "e1"]
    assert history_from_steps(served["steps"]) == old_memory
    tree = served_tree(served)
    assert (tree.leaf, tree.choices, tree.siblings) == ("u3", {"u1": "v1"}, {"v1": ["r1", "v1"]})
    # The reply left aside is one switch away, with its replay.
    aside = await layer.thread_path("t1", "r1")
    assert aside is not None and ids(aside) == ["n0", "u1", "run1", "r1", "p1"]
    assert len((await layer.whole_thread("t1") or {})["steps"]) == len(steps)
    await layer.close()


async def test_a_thread_nobody_placed_is_served_whole_in_time_order(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    """Steps with no place in a tree (Chainlit's steps on top, nothing else) come back as
    they always did."""
    await store.update_thread("t1", name="Plain", user_id=ada.id)
    for n in range(3):
        await store.create_step(
            {"id": f"s{n}", "threadId": "t1", "type": "run", "name": "tool", "createdAt": at()}
        )
    assert ids(await store.get_thread("t1") or {}) == ["s0", "s1", "s2"]


async def test_a_branch_asked_for_that_is_not_in_the_thread_is_refused(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await talk(store, ada)
    with pytest.raises(BranchGone):
        await store.choose_branch("t1", "nowhere")
    tab = BrowserTab()
    tab.session.user = PersistedUser(id="other", identifier="eve", createdAt="")
    tab.enter()
    with pytest.raises(ThreadAccessDenied):
        await store.choose_branch("t1", "r1")


async def test_deleting_a_branch_removes_that_subtree_alone_and_moves_off_it(
    store: ChatDataLayer, ada: PersistedUser
) -> None:
    await talk(store, ada)  # u1 ─ r1 ─ u2 ─ r2, u1 ─ v1 (active, with its receipt)
    await store.save_message(user_message("t1", "u3", "More"))  # under v1
    await store.create_step(
        {"id": "run3", "threadId": "t1", "type": "run", "parentId": "u3", "createdAt": at()}
    )
    await store.save_message({**reply("t1", "n3", "u3", "A notice"), "metadata": {}})
    assert (await store.user_threads(ada.id, search="More"))[0]["id"] == "t1"
    change = await store.delete_branch("t1", "v1")
    assert change.leaf == "r2" and "u1" not in change.choices
    whole = await store.whole_thread("t1")
    assert whole is not None and sorted(ids(whole)) == ["r1", "r2", "u1", "u2"]
    assert served_tree(await store.get_thread("t1") or {}).siblings == {}
    assert await store.db.value("SELECT count(*) FROM elements WHERE step_id = 'v1'") == 0
    assert not await store.user_threads(ada.id, search="More")  # its words unindexed
    # A late write of a deleted step (Chainlit's, in a task) does not bring it back.
    await store.update_step({**user_message("t1", "u3", "More"), "output": "More"})
    assert "u3" not in ids(await store.whole_thread("t1") or {})
    # The only version left is not a branch of its own: kept.
    with pytest.raises(BranchKept):
        await store.delete_branch("t1", "r1")
    with pytest.raises(BranchGone):
        await store.delete_branch("t1", "v1")
    tab = BrowserTab()
    tab.session.user = PersistedUser(id="other", identifier="eve", createdAt="")
    tab.enter()
    with pytest.raises(ThreadAccessDenied):
        await store.delete_branch("t1", "r1")


RELEASE = Path(__file__).parent / "fixtures"


async def test_a_database_made_by_the_release_before_trees_upgrades_with_nothing_lost(
    tmp_path: Path,
) -> None:
    """tests/fixtures/release-m6.db was made by the release before trees (c651be8, schema
    6), through its chat hooks on the real model: one thread with a regenerated reply, a
    follow-up under the new version, "Continue from this" back to the first reply, another
    follow-up, a replay, a compare and feedback; another user's plain thread. Beside it,
    what that release remembered for each on resume (the model's memory, its chosen
    replies, its messages). The tree it becomes serves that same memory, keeps every
    step, element and feedback, and shows the version left aside one switch away."""
    shutil.copy(RELEASE / "release-m6.db", tmp_path / "chatllm.db")
    expected = json.loads((RELEASE / "release-m6.json").read_text())
    url = f"sqlite+aiosqlite:///{tmp_path / 'chatllm.db'}"
    db = Database(url)
    counts = {
        table: await db.value(f"SELECT COUNT(*) FROM {table}")
        for table in ("threads", "steps", "elements", "feedbacks", "users")
    }
    assert await db.migrate() == [m.name for m in MIGRATIONS[6:]]
    layer = ChatDataLayer(db, FileStore(tmp_path / "files"))
    for table, count in counts.items():
        assert await db.value(f"SELECT COUNT(*) FROM {table}") == count, table
    for thread_id, old in expected.items():
        served = await layer.get_thread(thread_id)
        whole = await layer.whole_thread(thread_id)
        assert served is not None and whole is not None
        memory = [[m.type, m.content] for m in history_from_steps(served["steps"])]
        assert memory == old["memory"], thread_id
        assert served_tree(served).choices == old["chosen"]
        messages = [s["id"] for s in whole["steps"] if s["type"].endswith("message")]
        assert sorted(messages) == sorted(old["steps"])
    # The regenerated thread: the reply chosen back then is on the path, its other version
    # one switch away, with the follow-up written under it; the receipts, the compare and
    # the feedback where they were.
    (regenerated,) = [t for t, old in expected.items() if old["chosen"]]
    ((question, first),) = expected[regenerated]["chosen"].items()
    served = await layer.get_thread(regenerated)
    assert served is not None
    tree = served_tree(served)
    (kin,) = [k for node, k in tree.siblings.items() if node == first]
    (variant,) = [k for k in kin if k != first]
    aside = await layer.thread_path(regenerated, variant)
    assert aside is not None
    aside_messages = [s for s in aside["steps"] if s["type"].endswith("message")]
    assert [s["id"] for s in aside_messages][:2] == [question, variant]
    assert {s["metadata"].get("kind") for s in served["steps"] if s.get("metadata")} >= {
        "reply",
        "replay",
        "compare",
    }
    assert any(e["name"] == "Compare" for e in served.get("elements") or [])
    assert any((s.get("feedback") or {}).get("comment") == "good" for s in served["steps"])
    # Found by words of a branch the page does not show, and the conversation goes on
    # from the path shown.
    page = await layer.list_threads(
        Pagination(first=20), ThreadFilter(userId=served["userId"], search="ethereal")
    )
    assert [t["id"] for t in page.data] == [regenerated]
    leaf = tree.leaf
    await layer.save_message(user_message(regenerated, "next", "And the stars?"))
    after = await layer.get_thread(regenerated)
    assert after is not None and served_tree(after).path[-2:] == [leaf, "next"]
    await layer.close()
