"""Comparing settings in the chat, through the hooks Chainlit calls, on the real model:
receipts under replies, replay, regenerate and variants, presets, compare, export."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import chainlit as cl
import chainlit.data
import pytest
from chainlit.user import User
from langchain_core.messages import AIMessage, HumanMessage

from chatllm.chat import ChatApp
from chatllm.chat.actions import DELETE_BRANCH, DELETE_BRANCH_CONFIRMED, SWITCH_BRANCH
from chatllm.chat.panel import BRANCHES
from chatllm.config import Settings
from chatllm.conversation.tree import ATTACHED
from chatllm.export import export_thread
from chatllm.receipts import Receipt
from tests.support import BrowserTab, live_session

QUESTION = "Write a short poem about the sea."


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[ChatApp]:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    chat = ChatApp(settings)
    await chat.prepare("127.0.0.1")
    yield chat
    await chat.store.close()


async def new_chat(app: ChatApp, who: str = "ada", language: str = "en-US") -> BrowserTab:
    tab = BrowserTab(language=language)
    user = await app.store.create_user(User(identifier=who))
    assert user is not None
    tab.session.user = user
    tab.enter()
    await app.start()
    return tab


async def say(app: ChatApp, tab: BrowserTab, text: str, command: str | None = None) -> None:
    tab.enter()
    tab.session.has_first_interaction = True
    message = cl.Message(content=text, author="User", type="user_message")
    message.command = command
    await app.answer(message)


async def click(app: ChatApp, tab: BrowserTab, name: str, step_id: str) -> None:
    tab.enter()
    if name == "switch":  # the switcher ‹ n/m › (public/elements/Branches.jsx)
        await app.switch(cl.Action(name=SWITCH_BRANCH, payload={"to": step_id}))
        return
    if name == "fork":
        await app.fork(cl.Action(name="fork", payload={"step": step_id}))
        return
    action = cl.Action(name=name, payload={"step": step_id})
    await {"replay": app.replay, "regenerate": app.regenerate}[name](action)


async def reopen(app: ChatApp, old: BrowserTab) -> BrowserTab:
    thread = await app.store.get_thread(old.session.thread_id)
    assert thread is not None
    tab = BrowserTab()
    tab.session.user = old.session.user
    tab.session.thread_id = old.session.thread_id
    tab.enter()
    await app.resume(thread)
    await cl.context.emitter.resume_thread(thread)  # as Chainlit's socket does next
    return tab


async def stored_steps(app: ChatApp, tab: BrowserTab) -> list[dict[str, Any]]:
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    return [dict(s) for s in thread["steps"] if s["type"].endswith("message")]


def replies(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in steps if s["type"] == "assistant_message"]


def elements(tab: BrowserTab, name: str) -> list[dict[str, Any]]:
    return [e for e in tab.payloads("element") if e.get("name") == name]


def actions_for(tab: BrowserTab, step_id: str) -> list[str]:
    return [a["name"] for a in tab.payloads("action") if a["forId"] == step_id]


async def test_each_reply_shows_its_receipt_and_buttons_also_after_a_reload(app: ChatApp) -> None:
    tab = await new_chat(app)
    await app.update_settings({"temperature": 0.3, "max_tokens": 20, "seed": "42"})
    await say(app, tab, QUESTION)
    (reply,) = replies(await stored_steps(app, tab))
    receipt = Receipt.model_validate(reply["metadata"]["receipt"])
    assert receipt.sampling["temperature"] == 0.3 and receipt.seed == 42
    assert receipt.completion_tokens == 20 and receipt.finish_reason == "length"
    assert receipt.prompt_tokens and receipt.ttft_ms and receipt.tokens_per_second
    (shown,) = elements(tab, "Receipt")
    assert shown["forId"] == reply["id"]
    assert "seed 42" in shown["props"]["summary"] and "T 0.3" in shown["props"]["summary"]
    assert actions_for(tab, reply["id"]) == ["replay", "regenerate", "fork", "xray"]

    again = await reopen(app, tab)
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    (kept,) = [e for e in thread["elements"] if e["name"] == "Receipt"]
    assert kept["forId"] == reply["id"] and kept["props"]["receipt"] == reply["metadata"]["receipt"]
    assert actions_for(again, reply["id"]) == ["replay", "regenerate", "fork", "xray"]


async def test_replay_reruns_a_reply_and_says_the_text_matched(app: ChatApp) -> None:
    tab = await new_chat(app)
    await app.update_settings({"temperature": 1.2, "top_p": 1.0, "max_tokens": 30})
    await say(app, tab, "Hello there.")
    await say(app, tab, QUESTION)  # a reply with history before it, and a random seed
    original = replies(await stored_steps(app, tab))[-1]
    await app.update_settings({"temperature": 0.0, "max_tokens": 5})  # replay ignores these
    await click(app, tab, "replay", original["id"])
    replay = replies(await stored_steps(app, tab))[-1]
    assert replay["metadata"]["kind"] == "replay" and replay["metadata"]["identical"] is True
    assert replay["metadata"]["replay_of"] == original["id"]
    assert original["output"] in replay["output"]
    assert "identical text ✓" in replay["output"]
    seeds = {r["metadata"]["receipt"]["sampling"]["seed"] for r in (original, replay)}
    assert len(seeds) == 1
    # The same tokens, counted alike, never past the limit (a replay's receipt once said
    # 513 tokens with max 512).
    counts = [r["metadata"]["receipt"]["completion_tokens"] for r in (original, replay)]
    assert counts[0] == counts[1] <= 30, counts
    # A replay is a check, not part of the conversation.
    assert len(live_session().history) == 4


async def test_a_replay_of_a_reply_on_a_branch_left_replays_that_branch(app: ChatApp) -> None:
    """A reply whose earlier reply was regenerated since sits on a branch the page has
    left; replayed (from a page still showing it), it is run on its own conversation,
    not on the one now shown, and the replay goes with it."""
    tab = await new_chat(app)
    await app.update_settings({"temperature": 1.2, "top_p": 1.0, "max_tokens": 30, "seed": "3"})
    await say(app, tab, "Hello there.")
    await say(app, tab, QUESTION)
    greeting, original = replies(await stored_steps(app, tab))
    await app.update_settings({"seed": "4"})
    await click(app, tab, "regenerate", greeting["id"])
    await click(app, tab, "replay", original["id"])
    whole = await app.store.whole_thread(tab.session.thread_id)
    assert whole is not None
    (replay,) = [s for s in whole["steps"] if s["metadata"].get("kind") == "replay"]
    assert replay["metadata"]["identical"] is True
    before, again = original["metadata"]["receipt"], replay["metadata"]["receipt"]
    assert before["prompt_digest"] == again["prompt_digest"]
    assert (replay["treeParentId"], replay["treeDepth"]) == (original["id"], ATTACHED)
    assert replay["id"] not in [s["id"] for s in await stored_steps(app, tab)]
    # The tab stays on the branch it shows: its memory is the regenerated greeting's.
    assert live_session().history[1].content != greeting["output"]


async def test_a_replay_that_comes_out_different_shows_where_the_text_differs(
    app: ChatApp,
) -> None:
    """What a replay says when the text is not the same (another build of the model, a
    different prompt): here the stored reply and its prompt's digest are altered."""
    tab = await new_chat(app)
    await app.update_settings({"temperature": 1.2, "top_p": 1.0, "max_tokens": 30, "seed": "3"})
    await say(app, tab, QUESTION)
    (original,) = replies(await stored_steps(app, tab))
    metadata = dict(original["metadata"])
    metadata["receipt"] = {**metadata["receipt"], "prompt_digest": "0" * 16}
    original["output"] = "A different reply altogether, made elsewhere."
    await app.store.db.execute(
        "UPDATE steps SET output = :output, metadata = :metadata WHERE id = :id",
        {"output": original["output"], "metadata": json.dumps(metadata), "id": original["id"]},
    )
    await click(app, tab, "replay", original["id"])
    replay = replies(await stored_steps(app, tab))[-1]
    assert replay["metadata"]["kind"] == "replay" and replay["metadata"]["identical"] is False
    assert "the text differs ✗" in replay["output"]
    assert "the model saw a different prompt" in replay["output"]
    assert replay["metadata"]["receipt"]["sampling"]["seed"] == 3
    # The word diff of the original and the replay, shown under it.
    (view,) = [e for e in elements(tab, "Compare") if e["forId"] == replay["id"]]
    labels = [c["label"] for c in view["props"]["columns"]]
    assert labels == ["Original", "Replay"]
    shown_original = view["props"]["columns"][0]["text"]
    assert shown_original == original["output"]
    ops = {op for op, _ in view["props"]["diffs"]["0-1"]}
    assert {"-", "+"} <= ops  # words only in one of them are marked
    assert view["props"]["similarity"]["0-1"] < 1


def switchers(tab: BrowserTab) -> dict[str, dict[str, Any]]:
    """The last switcher ‹ n/m › sent under each message (an element sent again replaces
    itself, by its id); each one shown since the page last took a whole path."""
    shown: dict[str, dict[str, Any]] = {}
    for name, data in tab.events:
        if name == "resume_thread":  # the page takes the thread's elements in place of its own
            shown = {e["forId"]: e["props"] for e in data["elements"] if e["name"] == "Branches"}
        elif name == "element" and data.get("name") == "Branches":
            shown[data["forId"]] = data["props"]
    return shown


async def test_a_regenerated_reply_stands_where_the_first_stood_and_a_switch_brings_it_back(
    app: ChatApp,
) -> None:
    tab = await new_chat(app)
    await app.update_settings({"temperature": 0.0, "max_tokens": 12})
    await say(app, tab, QUESTION)
    (first,) = replies(await stored_steps(app, tab))
    await app.update_settings({"temperature": 1.5, "top_p": 1.0, "seed": "9"})
    await click(app, tab, "regenerate", first["id"])
    # The page takes the path again: the new reply where the first stood, not below it.
    shown = tab.payloads("resume_thread")[-1]
    (variant,) = replies([dict(s) for s in shown["steps"]])
    assert [s["type"] for s in shown["steps"] if s["type"].endswith("message")] == [
        "user_message",
        "assistant_message",
    ]
    assert shown["id"] == tab.session.thread_id  # the same thread: the page does not move
    assert variant["metadata"]["kind"] == "variant"
    assert variant["metadata"]["reply_to"] == first["metadata"]["reply_to"]
    assert variant["metadata"]["receipt"]["sampling"]["temperature"] == 1.5
    assert variant["output"] != first["output"]
    whole = await app.store.whole_thread(tab.session.thread_id)
    assert whole is not None
    assert first["id"] in [s["id"] for s in whole["steps"]]  # the first reply stays
    (receipt_view,) = [e for e in elements(tab, "Receipt") if e["forId"] == variant["id"]]
    assert receipt_view["props"]["title"].startswith("Variant 2")
    switch = switchers(tab)[variant["id"]]
    assert (switch["at"], switch["of"], switch["previous"], switch["next"]) == (
        2,
        2,
        first["id"],
        None,
    )
    # The model remembers the path on screen: the new reply ...
    assert live_session().history == [HumanMessage(QUESTION), AIMessage(variant["output"])]
    # ... until the user goes back to the first one.
    await click(app, tab, "switch", first["id"])
    assert live_session().history == [HumanMessage(QUESTION), AIMessage(first["output"])]
    shown = tab.payloads("resume_thread")[-1]
    assert [s["id"] for s in replies([dict(s) for s in shown["steps"]])] == [first["id"]]
    assert switchers(tab)[first["id"]]["next"] == variant["id"]
    assert actions_for(tab, first["id"])[-4:] == ["replay", "regenerate", "fork", "xray"]
    # The switch holds after a reload, and the next turn builds on it.
    again = await reopen(app, tab)
    assert live_session().leaf == first["id"]
    assert live_session().history[1] == AIMessage(first["output"])
    assert switchers(again)[first["id"]]["at"] == 1
    await say(app, again, "Shorter, please.")
    last = replies(await stored_steps(app, again))[-1]
    assert last["metadata"]["receipt"]["prompt_messages"] == 4
    path = [s["id"] for s in await stored_steps(app, again)]
    assert first["id"] in path and variant["id"] not in path


async def test_a_version_is_deleted_only_once_confirmed_and_the_page_shows_the_one_beside(
    app: ChatApp,
) -> None:
    tab = await new_chat(app)
    await app.update_settings({"temperature": 0.0, "max_tokens": 8})
    await say(app, tab, QUESTION)
    (first,) = replies(await stored_steps(app, tab))
    await app.update_settings({"temperature": 1.5, "seed": "9"})
    await click(app, tab, "regenerate", first["id"])
    (variant,) = replies(await stored_steps(app, tab))
    assert switchers(tab)[variant["id"]]["delete_action"] == DELETE_BRANCH
    await app.ask_to_delete_branch(cl.Action(name=DELETE_BRANCH, payload={"node": variant["id"]}))
    question = tab.messages()[-1]
    assert "Delete version 2 and everything after it (1 in all)?" in question["output"]
    confirm = [a for a in tab.payloads("action") if a["name"] == DELETE_BRANCH_CONFIRMED][-1]
    assert len(replies(await stored_steps(app, tab))) == 1  # asked, not yet deleted
    whole = await app.store.whole_thread(tab.session.thread_id)
    assert whole is not None and variant["id"] in [s["id"] for s in whole["steps"]]
    await app.delete_branch(
        cl.Action(name=DELETE_BRANCH_CONFIRMED, payload=confirm["payload"], forId=question["id"])
    )
    assert tab.payloads("delete_message")[-1]["id"] == question["id"]  # the question goes
    shown = tab.payloads("resume_thread")[-1]
    assert [s["id"] for s in replies([dict(s) for s in shown["steps"]])] == [first["id"]]
    assert not switchers(tab)  # one version left: nothing to switch
    assert live_session().history[1] == AIMessage(first["output"])
    whole = await app.store.whole_thread(tab.session.thread_id)
    assert whole is not None and variant["id"] not in [s["id"] for s in whole["steps"]]


async def test_the_branch_map_lists_every_branch_and_opens_any(app: ChatApp) -> None:
    tab = await new_chat(app)
    await app.update_settings({"temperature": 0.0, "max_tokens": 6})
    await say(app, tab, "Hello there.", command=BRANCHES)  # one branch: nothing to map
    assert "one branch" in tab.messages()[-1]["output"]
    await say(app, tab, "Hello there.")
    await say(app, tab, QUESTION)
    greeting, _ = replies(await stored_steps(app, tab))
    await app.update_settings({"temperature": 1.2, "seed": "5"})
    await click(app, tab, "regenerate", greeting["id"])  # a second branch, on screen
    await say(app, tab, "map", command=BRANCHES)
    (view,) = [e for e in elements(tab, "BranchMap")]
    rows = view["props"]["rows"]
    assert len(rows) == 2
    old, new = rows
    # Each named by where it parts from the other: the first reply, and its new version.
    assert old["label"] == " ".join(greeting["output"].split())[:60]
    assert old["messages"] == "4 messages" and not old["current"]
    assert new["current"] and new["kind"] == "reply version" and new["messages"] == "2 messages"
    assert "T 1.2" in new["settings"] and "seed 5" in new["settings"]
    assert "SmolLM2" in new["settings"]
    # A row opens its branch: the other one is on screen, the model remembers it.
    await click(app, tab, "switch", old["id"])
    assert live_session().leaf == old["id"]
    assert len(live_session().history) == 4


async def test_a_fork_is_a_new_conversation_up_to_the_reply_and_the_original_stays(
    app: ChatApp,
) -> None:
    tab = await new_chat(app)
    await app.update_settings({"temperature": 0.0, "max_tokens": 8})
    await say(app, tab, "Hello there.")
    await say(app, tab, QUESTION)
    greeting, _ = replies(await stored_steps(app, tab))
    before = await app.store.whole_thread(tab.session.thread_id)
    assert before is not None
    # Refused while a reply is being written.
    tab.session.current_task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
    await click(app, tab, "fork", greeting["id"])
    assert tab.payloads("toast")[-1]["type"] == "warning"
    tab.session.current_task = None
    await click(app, tab, "fork", greeting["id"])
    (link,) = [m for m in tab.messages() if "Forked into a new conversation" in m["output"]]
    new_id = link["output"].split("/thread/")[1].split(")")[0]
    fork = await app.store.get_thread(new_id)
    assert fork is not None
    assert [s["output"] for s in fork["steps"]] == ["Hello there.", greeting["output"]]
    assert greeting["id"] not in [s["id"] for s in fork["steps"]]  # new ids
    (receipt,) = [e for e in fork["elements"] or [] if e["name"] == "Receipt"]
    assert receipt["props"]["receipt"] == greeting["metadata"]["receipt"]  # receipts kept
    # ... and its token records, for the X-ray: the reply's own, under the fork's id.
    (forked_reply,) = [s for s in fork["steps"] if s["type"] == "assistant_message"]
    assert await app.store.thread_token_records(new_id) == {
        forked_reply["id"]: await app.store.token_records(tab.session.thread_id, greeting["id"])
    }
    assert fork["metadata"]["forked_from"] == {
        "thread": tab.session.thread_id,
        "message": greeting["id"],
    }
    assert fork["name"] == "Fork: Hello there."
    assert fork["userIdentifier"] == "ada"
    after = await app.store.whole_thread(tab.session.thread_id)
    assert after is not None
    assert after["steps"] == before["steps"]  # the original untouched
    assert after["tree"] == before["tree"]


async def test_presets_set_the_sliders_and_users_save_their_own(app: ChatApp) -> None:
    tab = await new_chat(app)
    (panel,) = tab.panels()
    preset = next(w for w in panel if w["id"] == "preset")
    labels = {item["value"]: item["label"] for item in preset["items"]}
    assert labels["builtin:code"].startswith("Code assistant")
    await app.update_settings({"preset": "builtin:code"})
    sampling = live_session().sampling
    assert (sampling.temperature, sampling.top_p) == (0.4, 0.5)
    latest = tab.panels()[-1]
    shown = {w["id"]: w["initial"] for w in latest}
    assert (shown["temperature"], shown["top_p"], shown["preset"]) == (0.4, 0.5, "builtin:code")

    # Moving a slider makes the settings custom; saving names them.
    await app.update_settings({"preset": "builtin:code", "temperature": 0.55, "top_k": 12})
    assert {w["id"]: w["initial"] for w in tab.panels()[-1]}["preset"] == "custom"
    await app.update_settings({"save_preset": "  My   poems ", "max_tokens": 99})
    latest = tab.panels()[-1]
    preset = next(w for w in latest if w["id"] == "preset")
    assert preset["initial"] == "user:My poems"
    assert "user:My poems" in [item["value"] for item in preset["items"]]
    assert {w["id"]: w["initial"] for w in latest}["save_preset"] == ""
    assert tab.payloads("toast")[-1]["message"] == "Saved the preset “My poems”."

    # It is the user's own: back in a new chat, and not offered to someone else.
    await app.update_settings({"preset": "builtin:precise"})
    assert live_session().sampling.temperature == 0.0
    later = await new_chat(app)
    await app.update_settings({"preset": "user:My poems"})
    sampling = live_session().sampling
    assert (sampling.temperature, sampling.top_k, sampling.max_tokens) == (0.55, 12, 99)
    assert later.panels()
    other = await new_chat(app, who="bob")
    (panel,) = other.panels()
    values = [item["value"] for item in next(w for w in panel if w["id"] == "preset")["items"]]
    assert "user:My poems" not in values
    # A button is only what the client sends: bob's naming ada's preset deletes nothing.
    forged = {"preset": "user:My poems"}
    await app.delete_preset(cl.Action(name="delete_preset_confirmed", payload=forged))
    assert "not one of yours" in other.payloads("toast")[-1]["message"]


def buttons(tab: BrowserTab, name: str) -> list[cl.Action]:
    """The buttons named `name` shown in the chat and not withdrawn since."""
    gone = {m["id"] for m in tab.payloads("delete_message")}
    gone |= {a["id"] for a in tab.payloads("remove_action")}
    return [
        cl.Action(**{k: a[k] for k in ("name", "payload", "label", "forId", "id")})
        for a in tab.payloads("action")
        if a["name"] == name and a["id"] not in gone and a["forId"] not in gone
    ]


async def test_a_preset_is_deleted_by_its_button_once_confirmed(app: ChatApp) -> None:
    """The Presets command lists the user's own presets, each with a button; pressing one
    asks, and only "Delete" deletes: "Keep it" keeps it. Built-in presets have none."""
    tab = await new_chat(app)
    await say(app, tab, "", command="Presets")
    assert buttons(tab, "delete_preset") == []  # none of her own yet
    assert "no presets of your own" in tab.messages()[-1]["output"]
    await app.update_settings({"temperature": 0.3, "save_preset": "Harbour"})
    await app.update_settings({"compare_with": ["user:Harbour", "builtin:code"]})

    await say(app, tab, "", command="Presets")
    (delete,) = buttons(tab, "delete_preset")
    assert delete.label == "Delete “Harbour”" and delete.payload == {"preset": "user:Harbour"}
    await app.ask_to_delete_preset(delete)
    assert buttons(tab, "delete_preset") == []  # the list gave way to the question
    assert tab.messages()[-1]["output"] == "Delete the preset “Harbour”? This cannot be undone."
    (keep,) = buttons(tab, "keep_preset")
    await app.keep_preset(keep)
    assert buttons(tab, "delete_preset_confirmed") == []
    assert "user:Harbour" in [p.key for p in await app.panel.available("en")]

    await say(app, tab, "", command="Presets")
    await app.ask_to_delete_preset(buttons(tab, "delete_preset")[0])
    (confirm,) = buttons(tab, "delete_preset_confirmed")
    await app.delete_preset(confirm)
    assert tab.payloads("toast")[-1]["message"] == "Deleted the preset “Harbour”."
    assert "user:Harbour" not in [p.key for p in await app.panel.available("en")]
    latest = {w["id"]: w for w in tab.panels()[-1]}
    assert "user:Harbour" not in [i["value"] for i in latest["preset"]["items"]]
    assert latest["preset"]["initial"] == "custom"
    assert latest["compare_with"]["initial"] == ["builtin:code"]  # no longer compared
    assert live_session().sampling.temperature == 0.3  # the sliders keep its values
    # Pressed again (another tab's old button): told, nothing else deleted.
    await app.delete_preset(confirm)
    assert "not one of yours" in tab.payloads("toast")[-1]["message"]
    builtin = {"preset": "builtin:code"}
    await app.delete_preset(cl.Action(name="delete_preset_confirmed", payload=builtin))
    assert "builtin:code" in [p.key for p in await app.panel.available("en")]


async def test_a_preset_saved_again_by_name_is_overwritten_and_never_holds_seed_or_prompt(
    app: ChatApp,
) -> None:
    tab = await new_chat(app)
    await app.update_settings(
        {"temperature": 0.3, "seed": "5", "system_prompt": "Speak like a sailor."}
    )
    await app.update_settings({"save_preset": "Harbour"})
    await app.update_settings({"temperature": 0.9, "top_k": 7})
    await app.update_settings({"save_preset": "Harbour"})  # the same name: overwritten
    menu = next(w for w in tab.panels()[-1] if w["id"] == "preset")
    assert [i["value"] for i in menu["items"]].count("user:Harbour") == 1
    # Applied in another chat with its own seed and system prompt: those stay.
    await new_chat(app)
    await app.update_settings({"seed": "11", "system_prompt": "Be brief."})
    await app.update_settings({"preset": "user:Harbour"})
    sampling = live_session().sampling
    assert (sampling.temperature, sampling.top_k) == (0.9, 7)  # the second save's values
    assert (sampling.seed, sampling.system_prompt) == (11, "Be brief.")


async def test_a_bad_preset_name_or_too_many_compare_sets_are_refused(app: ChatApp) -> None:
    tab = await new_chat(app)
    await app.update_settings({"save_preset": "x" * 61})
    assert "at most 60 characters" in tab.errors()[-1]
    await app.update_settings({"save_preset": ["a", "b"]})
    assert "preset name must be text" in tab.errors()[-1]
    assert "['a', 'b']" not in [p.label for p in await app.panel.available("en")]
    await app.update_settings(
        {
            "compare_with": [
                "builtin:code",
                "builtin:precise",
                "builtin:creative",
                "builtin:balanced",
            ]
        }
    )
    assert "at most 3 presets" in tab.errors()[-1]


def shown(tab: BrowserTab) -> dict[str, Any]:
    """The values the settings panel shows now (the last one the server sent)."""
    return {w["id"]: w["initial"] for w in tab.panels()[-1]}


def confirmed(tab: BrowserTab, **changes: Any) -> dict[str, Any]:
    """What the panel sends on Confirm: every widget's value (an empty text as None, as
    Chainlit's page sends it), with what the person changed."""
    form = {k: None if v == "" else v for k, v in shown(tab).items()}
    return {**form, **changes}


async def test_every_refused_preset_is_told_in_the_users_language(
    app: ChatApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name too long, a name that is not text, one preset too many: each in the chat's
    language, with nothing English inside the Chinese sentence."""
    monkeypatch.setattr("chatllm.presets.MAX_PER_USER", 1)
    tab = await new_chat(app, who="grace", language="zh-TW")
    await app.update_settings({"save_preset": "燈塔" * 31})
    await app.update_settings({"save_preset": ["a", "b"]})
    await app.update_settings({"save_preset": "海港"})  # the one this user may have
    await app.update_settings({"save_preset": "山"})
    assert tab.errors() == [
        "未儲存：預設組合名稱最多 60 個字元。",
        "未儲存：預設組合名稱必須是文字。",
        "未儲存：最多只能儲存 1 個預設組合；請先刪除一些（「預設組合」指令會列出它們）。",
    ]
    english = await new_chat(app, who="grace")
    await app.update_settings({"save_preset": "Hill"})
    assert english.errors() == [
        "Not saved: at most 1 presets can be saved; delete some first"
        " (the Presets command lists them)."
    ]


async def test_a_preset_named_like_a_built_in_is_refused_and_never_hides_it(
    app: ChatApp,
) -> None:
    """A preset of one's own named "Balanced" once replaced the built-in one in the menu
    (the menu is keyed by name): such names are refused, in any of the three languages,
    whatever the case and spacing, and "Custom" too. One saved before the check is shown
    apart from the built-in one, and each can be chosen."""
    tab = await new_chat(app)
    clashes = ("Balanced", "  balanced ", "CREATIVE", "Code  assistant", "均衡", "创意", "Custom")
    for name in clashes:
        await app.update_settings({"save_preset": name, "temperature": 0.2})
        plain = " ".join(name.split())
        assert tab.errors()[-1] == (
            f"Not saved: “{plain}” is a built-in name in the preset menu. Choose another"
            " name for your own preset; the settings are as they were."
        )
    assert len(tab.errors()) == len(clashes)
    assert [p.key for p in await app.panel.available("en") if p.key.startswith("user:")] == []
    assert live_session().sampling.temperature == 0.7  # the edit refused as a whole
    chinese = await new_chat(app, language="zh-TW")
    await app.update_settings({"save_preset": "創意"})
    assert chinese.errors()[-1].startswith("未儲存：「創意」是預設組合選單內建的名稱。")

    # Saved before names were checked: both are in the menu, the built-in one as itself.
    user = tab.session.user
    assert user is not None
    await app.presets.rows.save(user.id, "Balanced", {"temperature": 0.3}, most=100)
    tab = await new_chat(app)
    items = next(w for w in tab.panels()[-1] if w["id"] == "preset")["items"]
    labels = [item["label"] for item in items]
    assert len(labels) == len(set(labels))
    by_key = {item["value"]: item["label"] for item in items}
    assert (by_key["builtin:balanced"], by_key["user:Balanced"]) == ("Balanced", "Balanced (yours)")
    await app.update_settings({"preset": "user:Balanced"})
    assert live_session().sampling.temperature == 0.3
    await app.update_settings({"preset": "builtin:balanced"})
    assert live_session().sampling.temperature == 0.7
    # Its delete button deletes it, by its stored name.
    await say(app, tab, "", command="Presets")
    (delete,) = buttons(tab, "delete_preset")
    await app.ask_to_delete_preset(delete)
    await app.delete_preset(buttons(tab, "delete_preset_confirmed")[0])
    assert tab.payloads("toast")[-1]["message"] == "Deleted the preset “Balanced (yours)”."
    assert [p.key for p in await app.panel.available("en") if p.key.startswith("user:")] == []


async def test_a_slider_moved_in_the_same_edit_as_a_chosen_preset_is_kept(app: ChatApp) -> None:
    """Temperature moved to 0.15 and Creative chosen, then Confirm (the panel sends every
    value at once): Creative's other values apply, the temperature moved stays, the person
    is told, and the panel shows it at once (Custom: the sliders are no preset now)."""
    tab = await new_chat(app)
    await app.update_settings(confirmed(tab, temperature=0.15, preset="builtin:creative"))
    sampling = live_session().sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.15, 0.98, 100)
    assert sampling.repeat_penalty == 1.05
    panel = shown(tab)
    assert (panel["temperature"], panel["top_k"], panel["preset"]) == (0.15, 100, "custom")
    assert tab.payloads("toast")[-1]["message"] == (
        "Applied “Creative”, keeping what you moved yourself in the same edit: Temperature."
    )
    # Chosen with nothing moved: all of it, and the menu names it.
    await app.update_settings(confirmed(tab, preset="builtin:creative"))
    assert live_session().sampling.temperature == 1.1
    assert (shown(tab)["temperature"], shown(tab)["preset"]) == (1.1, "builtin:creative")


async def test_a_new_chat_whose_sliders_equal_a_preset_shows_that_preset(app: ChatApp) -> None:
    """The default sliders are Balanced's: the menu says so, not "Custom"; sliders set by
    hand to a preset's values name it too."""
    tab = await new_chat(app)
    assert shown(tab)["preset"] == "builtin:balanced"
    await app.update_settings(
        confirmed(tab, temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0)
    )
    assert shown(tab)["preset"] == "builtin:precise"
    await app.update_settings(confirmed(tab, temperature=0.05))
    assert shown(tab)["preset"] == "custom"


@pytest.fixture
def chainlit_writes(app: ChatApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chainlit writes every message it sends (in a task nobody awaits) to the app's
    store, as app.py's `@cl.data_layer` has it do in the running app."""
    monkeypatch.setattr(chainlit.data, "_data_layer", app.store)
    monkeypatch.setattr(chainlit.data, "_data_layer_initialized", True)


@pytest.mark.usefixtures("chainlit_writes")
async def test_refused_settings_are_shown_to_the_user_alone(app: ChatApp) -> None:
    """A refused value or preset name is told to the person in the chat, and that is all:
    not stored in the thread, so neither shared nor exported, and in a new chat nothing
    waits for the first message to make a thread of it."""
    tab = await new_chat(app)
    await app.update_settings({"save_preset": "x" * 61})  # a new chat: no thread yet
    await app.update_settings({"seed": "-5"})
    await app.update_settings({"temperature": 0.0, "max_tokens": 6})  # put right
    assert len(tab.errors()) == 2
    # Chainlit holds a new chat's writes back until its first message, then makes the
    # thread of them (a command that stores nothing made an "Untitled" thread).
    assert tab.session.thread_queues.get("create_step", []) == []
    await say(app, tab, QUESTION)
    await app.update_settings({"seed": "a whole number"})  # the thread exists now
    assert len(tab.errors()) == 3
    await say(app, tab, "And once more.")  # its writes come after any the refusal began
    steps = await stored_steps(app, tab)
    assert [s["type"] for s in steps] == ["user_message", "assistant_message"] * 2
    assert not any(s.get("isError") for s in steps)
    document = await export_thread(app.store, tab.session.thread_id)
    exported = json.dumps(document, ensure_ascii=False)
    assert QUESTION in exported
    assert [error for error in tab.errors() if error in exported] == []


async def test_compare_shows_replies_side_by_side_and_comes_back_on_resume(
    app: ChatApp,
) -> None:
    tab = await new_chat(app)
    await app.update_settings(
        {
            "temperature": 0.0,
            "max_tokens": 16,
            "compare_with": ["builtin:code", "builtin:creative"],
        }
    )
    await say(app, tab, QUESTION, command="Compare")
    steps = await stored_steps(app, tab)
    assert steps[0]["type"] == "user_message" and steps[0]["output"] == QUESTION
    (holder,) = replies(steps)
    compared = holder["metadata"]["compare"]["replies"]
    assert [c["label"] for c in compared] == [
        "Current settings",
        "Code assistant (T 0.4, top_p 0.5)",
        "Creative",
    ]
    receipts = [Receipt.model_validate(c["receipt"]) for c in compared]
    assert [r.sampling["temperature"] for r in receipts] == [0.0, 0.4, 1.1]
    assert len({r.seed for r in receipts}) == 1  # one seed: only the settings differ
    assert all(c["text"] for c in compared)
    final = [e for e in elements(tab, "Compare") if e["props"]["done"]][-1]
    assert [c["text"] for c in final["props"]["columns"]] == [c["text"] for c in compared]
    # The columns were shown filling in while the replies were written.
    partial = [e["props"]["columns"] for e in elements(tab, "Compare") if not e["props"]["done"]]
    assert any(
        columns and 0 < len(columns[0]["text"]) < len(compared[0]["text"]) for columns in partial
    )
    assert set(final["props"]["diffs"]) == {"0-1", "0-2", "1-2"}
    # Not part of the model's memory; shown again on resume.
    assert live_session().history == []
    await reopen(app, tab)
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    (kept,) = [e for e in thread["elements"] if e["name"] == "Compare"]
    assert kept["forId"] == holder["id"] and kept["props"]["done"] is True


async def test_compare_without_presets_says_how_to_choose_them(app: ChatApp) -> None:
    tab = await new_chat(app)
    await app.update_settings({"compare_with": []})
    await say(app, tab, QUESTION, command="Compare")
    assert "Compare with" in tab.errors()[-1]


async def test_export_from_the_chat_gives_markdown_and_json_with_receipts(
    app: ChatApp,
) -> None:
    tab = await new_chat(app)
    await app.update_settings({"temperature": 0.0, "max_tokens": 10})
    await say(app, tab, "你好，請介紹一下你自己。")
    await say(app, tab, "md and json", command="Export")
    steps = await stored_steps(app, tab)
    assert "md and json" not in [s["output"] for s in steps]  # the command is not a message
    files = {e["name"]: e for e in tab.payloads("element") if e["type"] == "file"}
    names = sorted(files)
    assert [n.rsplit(".", 1)[1] for n in names] == ["json", "md"]
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    paths = {}
    for element in thread["elements"]:
        if element["type"] == "file":
            found = await app.store.element_file(tab.session.thread_id, element["id"])
            assert found is not None
            paths[element["name"]] = found[0]
    document = json.loads(paths[names[0]].read_text("utf-8"))
    (reply,) = [m for m in document["messages"] if m.get("receipt")]
    assert reply["receipt"]["sampling"]["max_tokens"] == 10
    markdown = paths[names[1]].read_text("utf-8")
    assert "你好，請介紹一下你自己。" in markdown and "seed" in markdown


async def test_commands_are_named_in_the_users_language_and_run_by_that_name(
    app: ChatApp,
) -> None:
    """Chainlit shows a command's id on its button and in its menu: a zh-TW chat's are in
    Chinese, and a message sent with one runs it (an English name still does)."""
    tab = BrowserTab(language="zh-TW")
    user = await app.store.create_user(User(identifier="ada"))
    assert user is not None
    tab.session.user = user
    tab.enter()
    await app.start()
    (commands,) = tab.payloads("set_commands")
    assert [c["id"] for c in commands] == ["比較", "匯出", "匯入", "預設組合", "分支", "分享"]
    await say(app, tab, "", command="匯出")  # a new chat: nothing to export, said in Chinese
    assert tab.errors()[-1] == "還沒有可匯出的內容：這個對話還沒有訊息。"
    await say(app, tab, "", command="預設組合")
    assert "您還沒有自己的預設組合" in tab.messages()[-1]["output"]
    shown = len(tab.messages())
    await say(app, tab, "", command="Presets")
    assert len(tab.messages()) == shown + 1  # listed again
    assert "您還沒有自己的預設組合" in tab.messages()[-1]["output"]
