"""Share links: the Share command (its link, its QR code, Stop sharing) through the hooks
Chainlit calls, and the link opened on a running app in each of the operator's modes.
Signed-in viewers in password mode are in test_multiuser.py; the whole round in a
browser in test_browser.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import segno
from PIL import Image

from chatllm.chat import ChatApp
from chatllm.config import Settings
from chatllm.share import SHARED, read_only
from tests.support import AppServer, BrowserTab, SocketUser
from tests.test_comparing import buttons, new_chat, say

ROOM = "http://192.168.1.20:8000"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[ChatApp]:
    yield await started(Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]


async def started(settings: Settings) -> ChatApp:
    chat = ChatApp(settings)
    await chat.prepare("127.0.0.1")
    return chat


async def chat_at(app: ChatApp, origin: str, language: str = "en-US") -> BrowserTab:
    """A chat whose page was loaded from `origin`, with one question answered."""
    tab = await new_chat(app)
    tab.session.environ.update({"HTTP_ORIGIN": origin, "HTTP_ACCEPT_LANGUAGE": language})
    tab.session.language = language
    await say(app, tab, "Name a colour of the sea.")
    return tab


async def metadata(app: ChatApp, tab: BrowserTab) -> dict[str, Any]:
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    return dict(thread["metadata"])


def qr_text_matches(path: Path, text: str) -> bool:
    """Whether the PNG at `path` is the QR code of `text`: its modules, read back from the
    pixels (8 per module, a quiet zone of 4), are the ones `text` makes."""
    expected = segno.make(text, error="m", micro=False).matrix
    image = Image.open(path).convert("L")
    modules = image.width // 8 - 8
    if image.width != image.height or modules != len(expected):
        return False
    read = [
        [image.getpixel((8 * (4 + x) + 4, 8 * (4 + y) + 4)) < 128 for x in range(modules)]
        for y in range(modules)
    ]
    return read == [[bool(m) for m in row] for row in expected]


async def test_the_share_command_shares_the_thread_and_shows_its_link_with_a_qr_code(
    app: ChatApp,
) -> None:
    tab = await chat_at(app, ROOM)
    thread_id = tab.session.thread_id
    assert not (await metadata(app, tab)).get(SHARED)
    await say(app, tab, "", command="Share")

    link = f"{ROOM}/share/{thread_id}"
    shown = tab.messages()[-1]
    assert link in shown["output"] and "Anyone signed in to this app" in shown["output"]
    assert "own address" not in shown["output"]  # the room can reach this one
    assert (await metadata(app, tab))[SHARED] is True
    (qr,) = [e for e in tab.payloads("element") if e["forId"] == shown["id"]]
    assert qr["type"] == "image" and qr["name"] == "QR code of the share link"
    assert qr_text_matches(Path(tab.session.files[qr["chainlitKey"]]["path"]), link)
    assert not qr_text_matches(Path(tab.session.files[qr["chainlitKey"]]["path"]), link + "x")
    # Neither the command nor the link is part of the conversation that is shared.
    thread = await app.store.get_thread(thread_id)
    assert thread is not None
    assert [s["output"] for s in thread["steps"] if s["type"] == "user_message"] == [
        "Name a colour of the sea."
    ]
    assert not any("/share/" in (s["output"] or "") for s in thread["steps"])
    assert not thread["elements"] or all(e["type"] != "image" for e in thread["elements"])

    (stop,) = buttons(tab, "stop_sharing")
    await app.stop_sharing(stop)
    assert (await metadata(app, tab))[SHARED] is False
    assert tab.payloads("toast")[-1]["message"] == "No longer shared: the link opens nothing now."
    assert shown["id"] in [m["id"] for m in tab.payloads("delete_message")]
    await app.store.close()


async def test_a_link_to_this_computer_says_the_room_cannot_open_it_in_the_users_language(
    app: ChatApp,
) -> None:
    tab = await chat_at(app, "http://127.0.0.1:8000", language="zh-TW")
    await say(app, tab, "", command="分享")
    shown = tab.messages()[-1]["output"]
    assert f"http://127.0.0.1:8000/share/{tab.session.thread_id}" in shown
    assert "其他裝置無法開啟" in shown and "CHATLLM_PUBLIC_URL" in shown
    await app.store.close()


async def test_the_operator_names_the_address_links_are_made_with(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, public_url="https://chat.example.org/demo/"
    )  # type: ignore[call-arg]
    app = await started(settings)
    tab = await chat_at(app, "http://127.0.0.1:8000")
    await say(app, tab, "", command="Share")
    shown = tab.messages()[-1]["output"]
    assert f"https://chat.example.org/demo/share/{tab.session.thread_id}" in shown
    assert "own address" not in shown
    await app.store.close()


async def test_a_chat_naming_another_users_thread_can_neither_share_nor_unshare_it(
    app: ChatApp,
) -> None:
    """A client names its chat's thread itself: one that names another user's thread
    changes nothing of it with Share or Stop sharing."""
    ada = await chat_at(app, ROOM)
    await say(app, ada, "", command="Share")
    (stop,) = buttons(ada, "stop_sharing")
    assert (await metadata(app, ada))[SHARED] is True
    eve = await new_chat(app, who="eve")
    eve.session.thread_id = ada.session.thread_id  # forged
    await say(app, eve, "", command="Share")
    assert eve.errors() == ["Nothing to share yet: this chat has no messages."]
    await app.stop_sharing(stop)  # her button, pressed in his chat
    assert (await metadata(app, ada))[SHARED] is True  # still shared, as she left it
    await app.store.close()


async def test_an_empty_chat_has_nothing_to_share(app: ChatApp) -> None:
    tab = await new_chat(app)
    await say(app, tab, "", command="Share")
    assert tab.errors() == ["Nothing to share yet: this chat has no messages."]
    assert buttons(tab, "stop_sharing") == []
    await app.store.close()


async def test_with_sharing_off_there_is_no_share_command_and_nothing_is_shared(
    tmp_path: Path,
) -> None:
    app = await started(Settings(_env_file=None, data_dir=tmp_path, sharing="off"))  # type: ignore[call-arg]
    tab = await chat_at(app, ROOM)
    (commands,) = tab.payloads("set_commands")[-1:]
    assert "Share" not in [c["id"] for c in commands] and "Export" in [c["id"] for c in commands]
    await say(app, tab, "", command="Share")  # sent anyway, as any client can
    assert tab.errors() == ["Sharing is switched off on this app (CHATLLM_SHARING=off)."]
    assert not (await metadata(app, tab)).get(SHARED)
    await app.store.close()


# ---- the link, opened on a running app


@pytest.fixture(scope="module")
def anyone_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    app = AppServer(tmp_path_factory.mktemp("share-anyone"), env={"CHATLLM_SHARING": "anyone"})
    yield app.start()
    app.stop()


def local_cookies(base: str) -> httpx.Cookies:
    return httpx.post(base + "/auth/header", timeout=30).cookies


async def a_thread(base: str, question: str) -> str:
    tab = SocketUser(base)
    await tab.connect()
    await tab.turn(question)
    await tab.client.disconnect()
    return tab.thread_id


def share(base: str, thread_id: str, shared: bool) -> httpx.Response:
    return httpx.put(
        base + "/project/thread/share",
        json={"threadId": thread_id, "isShared": shared},
        cookies=local_cookies(base),
        timeout=30,
    )


def test_with_sharing_for_anyone_a_link_opens_a_page_of_the_thread_alone_without_a_login(
    anyone_app: AppServer,
) -> None:
    base = anyone_app.base
    question = "Say <b>bold</b> & <script>alert(1)</script> about the sea."
    thread_id = asyncio.run(a_thread(base, question))
    other = asyncio.run(a_thread(base, "A question from another thread."))
    page = httpx.get(f"{base}/share/{thread_id}", timeout=30)
    assert page.status_code == 404 and "not shared" in page.text  # not yet shared
    assert question not in page.text

    assert share(base, thread_id, True).status_code == 200
    page = httpx.get(f"{base}/share/{thread_id}", headers={"Accept-Language": "zh-TW"}, timeout=30)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text  # the question's HTML is shown as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "分享的對話（唯讀）" in page.text and 'lang="zh-TW"' in page.text
    assert "個詞元" in page.text and "種子" in page.text  # the reply's receipt, in zh-TW
    assert "A question from another thread." not in page.text
    assert "<form" not in page.text and "socket.io" not in page.text  # nothing to send with
    # Signed in, the same link is Chainlit's page, whose read-only view the API feeds.
    signed_in = httpx.get(f"{base}/share/{thread_id}", cookies=local_cookies(base), timeout=30)
    assert '<div id="root">' in signed_in.text
    # The API itself still wants a login, as Chainlit's does; another thread is not shared.
    assert httpx.get(f"{base}/project/share/{thread_id}", timeout=30).status_code == 401
    assert httpx.get(f"{base}/share/{other}", timeout=30).status_code == 404

    assert share(base, thread_id, False).status_code == 200
    page = httpx.get(f"{base}/share/{thread_id}", timeout=30)
    assert page.status_code == 404 and question not in page.text


def test_with_sharing_off_no_thread_can_be_shared(tmp_path: Path) -> None:
    app = AppServer(tmp_path, env={"CHATLLM_SHARING": "off"}).start()
    try:
        thread_id = asyncio.run(a_thread(app.base, "Off the record."))
        refused = share(app.base, thread_id, True)
        assert refused.status_code == 404 and "sharing is off" in refused.text
        cookies = local_cookies(app.base)
        opened = httpx.get(f"{app.base}/project/share/{thread_id}", cookies=cookies)
        assert opened.status_code == 404
        config = httpx.get(f"{app.base}/project/settings", cookies=cookies, timeout=30).json()
        assert config["threadSharing"] is False  # no Share button on the page
        thread = httpx.get(f"{app.base}/project/thread/{thread_id}", cookies=cookies).json()
        assert not thread["metadata"].get(SHARED)
    finally:
        app.stop()


def test_a_share_holds_the_conversation_and_nothing_of_the_authors_session() -> None:
    """What a viewer gets of a thread: its messages and their files, never a message that
    served the author's session (the Export command's, with its files holding the
    settings; the Import command's question and answer), what is nested under one, the
    system prompt a receipt or comparison recorded, or a file under no shown message."""
    secret = "You are the presenter's secret persona."
    receipt = {"sampling": {"temperature": 0.7, "system_prompt": secret}}
    thread = {
        "id": "t",
        "name": "A talk",
        "metadata": {"is_shared": True, "chat_settings": {"system_prompt": secret}},
        "steps": [
            {"id": "run", "type": "run", "parentId": None, "metadata": {}},
            {"id": "q", "type": "user_message", "parentId": "run", "metadata": {}},
            {
                "id": "a",
                "type": "assistant_message",
                "parentId": "run",
                "metadata": {"kind": "reply", "receipt": receipt},
                "feedback": {"value": 0, "comment": "the author's"},
            },
            {"id": "x", "type": "assistant_message", "metadata": {"kind": "export"}},
            {"id": "x-child", "type": "tool", "parentId": "x", "metadata": {}},
            {"id": "i", "type": "assistant_message", "metadata": {"kind": "import"}},
        ],
        "elements": [
            {"id": "e-receipt", "forId": "a", "props": {"receipt": receipt}},
            {"id": "e-compare", "forId": "a", "props": {"replies": [{"receipt": receipt}]}},
            {"id": "e-upload", "forId": "q", "props": {}},
            {"id": "e-export", "forId": "x", "props": {}},
            {"id": "e-nested", "forId": "x-child", "props": {}},
            {"id": "e-loose", "forId": None, "props": {}},
        ],
    }
    view = read_only(thread)
    assert [s["id"] for s in view["steps"]] == ["run", "q", "a"]
    assert [e["id"] for e in view["elements"]] == ["e-receipt", "e-compare", "e-upload"]
    assert secret not in json.dumps(view) and "the author's" not in json.dumps(view)
    assert view["steps"][2]["metadata"]["receipt"]["sampling"] == {"temperature": 0.7}
    assert view["metadata"] == {"is_shared": True}
