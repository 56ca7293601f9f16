"""Starters: what each chat profile offers under the welcome, in the user's language; what
one does when clicked (its preset set, its comparison run); the operator's own file,
checked at start-up."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatllm.chat import ChatApp
from chatllm.config import Settings
from chatllm.errors import ConfigError
from chatllm.starters import Starters
from tests.support import live_session
from tests.test_comparing import elements, new_chat, say, stored_steps
from tests.test_startup import start_expecting_refusal


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[ChatApp]:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    chat = ChatApp(settings)
    await chat.prepare("127.0.0.1")
    yield chat
    await chat.store.close()


async def starters_of(app: ChatApp, lang: str) -> list[dict[str, Any]]:
    (profile, *_) = await app.profiles(None, lang)
    assert profile.starters
    return [s.to_dict() for s in profile.starters]


async def test_each_profile_offers_starters_in_the_users_language(app: ChatApp) -> None:
    english = await starters_of(app, "en-US")
    assert [s["label"] for s in english] == [
        "Write a Python function",
        "Ask in Chinese",
        "Compare precise and creative",
        "What do the sliders do?",
    ]
    code, chinese, compare, _ = english
    assert code["command"] == "Code assistant (T 0.4, top_p 0.5)"  # the preset it sets
    assert compare["command"] == "Compare"
    assert chinese["command"] is None and chinese["message"] == "請用三句話介紹台灣的夜市文化。"
    taiwan = await starters_of(app, "zh-TW")
    labels = [s["label"] for s in taiwan]
    assert labels[:3] == ["寫一個 Python 函式", "用中文提問", "比較精確與創意"]
    assert taiwan[0]["command"] == "程式助手（T 0.4，top_p 0.5）" and taiwan[2]["command"] == "比較"
    china = await starters_of(app, "zh-CN")
    assert china[1]["message"] == "请用三句话介绍一下长城。"
    assert china[3]["label"] == "滑块有什么作用？"


async def test_the_code_starter_answers_under_the_code_assistant_preset(app: ChatApp) -> None:
    tab = await new_chat(app)
    (code, *_) = await starters_of(app, "en-US")
    assert live_session().sampling.temperature == 0.7
    await say(app, tab, code["message"], command=code["command"])
    session = live_session()
    assert session.preset == "builtin:code" and session.sampling.temperature == 0.4
    assert session.sampling.top_p == 0.5
    panel = {w["id"]: w for w in tab.panels()[-1]}
    assert panel["preset"]["initial"] == "builtin:code" and panel["temperature"]["initial"] == 0.4
    steps = await stored_steps(app, tab)
    assert [s["type"] for s in steps] == ["user_message", "assistant_message"]
    receipt = steps[1]["metadata"]["receipt"]["sampling"]
    assert receipt["temperature"] == 0.4 and receipt["top_p"] == 0.5  # what made the reply
    # The thread keeps the preset: a resumed chat has it.
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None and thread["metadata"]["chat_settings"]["preset"] == "builtin:code"


async def test_the_compare_starter_runs_its_comparison(app: ChatApp) -> None:
    tab = await new_chat(app, who="bo")
    compare = (await starters_of(app, "en-US"))[2]
    await say(app, tab, compare["message"], command=compare["command"])
    assert tab.errors() == []
    assert live_session().compare_with == ["builtin:precise", "builtin:creative"]
    (view,) = elements(tab, "Compare")[-1:]
    labels = [column["label"] for column in view["props"]["columns"]]
    assert labels == ["Current settings", "Precise (greedy)", "Creative"]


async def test_a_typed_message_is_no_starter_and_changes_nothing(app: ChatApp) -> None:
    tab = await new_chat(app)
    (code, *_) = await starters_of(app, "en-US")
    await say(app, tab, code["message"])  # the same words, without the starter's command
    assert live_session().preset != "builtin:code" and live_session().sampling.temperature == 0.7
    steps = await stored_steps(app, tab)
    assert steps[1]["metadata"]["receipt"]["sampling"]["temperature"] == 0.7  # answered as is


def write_starters(data_dir: Path, document: object) -> None:
    text = document if isinstance(document, str) else json.dumps(document, ensure_ascii=False)
    (data_dir / "starters.json").write_text(text, encoding="utf-8")


async def test_an_operators_file_replaces_the_starters(tmp_path: Path) -> None:
    write_starters(
        tmp_path,
        {
            "starters": [
                {
                    "label": {"en": "Plan a trip", "zh-TW": "規劃旅行"},
                    "message": "Plan a day in Taipei.",
                    "preset": "creative",
                    "icon": "/public/favicon.svg",
                },
                {"label": "Only on endpoints", "message": "Hi", "profiles": ["openai"]},
            ]
        },
    )
    app = ChatApp(Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]
    await app.prepare("127.0.0.1")
    try:
        (trip,) = await starters_of(app, "zh-TW")  # the local profile: not the endpoint's
        assert trip == {
            "label": "規劃旅行",
            "message": "Plan a day in Taipei.",  # one text for every language
            "command": "創意",
            "icon": "/public/favicon.svg",
        }
        assert (await starters_of(app, "zh-CN"))[0]["label"] == "Plan a trip"  # falls back
    finally:
        await app.store.close()


@pytest.mark.parametrize(
    ("document", "said"),
    [
        ("{not json", "is not JSON: Expecting property name enclosed in double quotes at line 1"),
        ({"starters": [{"label": "A", "message": "B", "preset": "fast"}]}, "starters.0.preset"),
        ({"starters": [{"label": {"zh-TW": "甲"}, "message": "B"}]}, "needs an English (en)"),
        ({"starters": [{"label": "A", "message": "B", "colour": "red"}]}, "starters.0.colour"),
        ({"starters": [{"label": "A", "message": "B", "icon": "/etc/passwd"}]}, "under public/"),
        ({"starters": [{"label": "A", "message": "B"}] * 9}, "at most 8 items"),
        ({"starters": [{"label": "A", "message": " "}]}, "the message in en is empty"),
        (
            {"starters": [{"label": "A", "message": "B", "compare_with": ["code"] * 4}]},
            "at most 3 presets",
        ),
    ],
)
def test_a_malformed_file_is_refused_saying_what_and_where(
    tmp_path: Path, document: object, said: str
) -> None:
    write_starters(tmp_path, document)
    with pytest.raises(ConfigError) as refused:
        Starters.load(tmp_path)
    assert str(tmp_path / "starters.json") in str(refused.value) and said in str(refused.value)


def test_a_malformed_file_stops_start_up_with_its_message(tmp_path: Path) -> None:
    write_starters(tmp_path, {"starters": [{"label": "A", "message": "B", "preset": "fast"}]})
    result = start_expecting_refusal(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "chatllm cannot start" in result.stderr and "starters.json" in result.stderr
    assert "'fast' is not a built-in preset" in result.stderr
