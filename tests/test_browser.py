"""What a person sees: the app started as the README starts it, driven in Debian's Chromium.

Each step leaves a screenshot in artifacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    BrowserContext,
    Locator,
    Page,
    Playwright,
    Route,
    expect,
    sync_playwright,
)

from chatllm.config import Settings
from tests.support import AppServer, SocketUser, children, missing_glyphs

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHATLLM_CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
# Flags that work on this machine's closed network (no Google services to reach).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = ROOT / "tests" / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
REPLY = '[data-step-type="assistant_message"] .message-content'
QUESTION = '[data-step-type="user_message"]'
LONG_WAIT = 120_000  # ms: a reply from the 135M model on 2 cores, with room to spare


@dataclass
class App:
    base: str
    data_dir: Path
    server: AppServer

    def threads(self) -> list[str]:
        with sqlite3.connect(self.data_dir / "chatllm.db") as raw:
            return [name or "" for (name,) in raw.execute("SELECT name FROM threads")]

    def replies(self, question: str | None = None) -> list[dict[str, Any]]:
        """The assistant replies stored, oldest first, with their metadata: all of them, or
        those of the thread where `question` was asked (each test asks its own)."""
        where = "type = 'assistant_message'"
        if question is not None:
            where += (
                " AND thread_id IN (SELECT thread_id FROM steps"
                " WHERE type = 'user_message' AND output = :question)"
            )
        with sqlite3.connect(self.data_dir / "chatllm.db") as raw:
            rows = raw.execute(
                f"SELECT thread_id, output, metadata FROM steps WHERE {where} ORDER BY seq",
                {"question": question},
            ).fetchall()
        return [
            {"thread": t, "output": o, "metadata": json.loads(m)}
            for t, o, m in rows
            if "finish_reason" in json.loads(m)
        ]


def start_app(data_dir: Path) -> App:
    server = AppServer(data_dir).start()
    return App(server.base, data_dir, server)


def stop_app(app: App) -> None:
    app.server.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: `make test` installs it (apt)"
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def local_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    app = start_app(tmp_path_factory.mktemp("browser-data"))
    yield app
    stop_app(app)


def open_browser(playwright: Playwright, tmp: Path, locale: str = "en-US") -> BrowserContext:
    return playwright.chromium.launch_persistent_context(
        str(tmp / f"profile-{locale}-{time.monotonic_ns()}"),  # a fresh --user-data-dir
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_FLAGS,
        locale=locale,
        viewport={"width": 1280, "height": 860},
    )


@pytest.fixture(scope="module")
def browser(playwright: Playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    context = open_browser(playwright, tmp_path_factory.mktemp("chromium"))
    page = context.pages[0] if context.pages else context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs  # type: ignore[attr-defined]
    yield page
    context.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def words(text: str) -> list[str]:
    return re.sub(r"[`*_#>]", "", text).split()


def send(page: Page, text: str) -> None:
    page.locator("#chat-input").fill(text)
    page.locator("#chat-input").press("Enter")


def wait_for_reply(page: Page, count: int) -> str:
    """Wait until the `count`-th reply has finished streaming; its text, without the
    receipt shown under it."""
    replies = page.locator(REPLY)
    expect(replies).to_have_count(count, timeout=LONG_WAIT)
    expect(page.locator("#stop-button")).to_have_count(0, timeout=LONG_WAIT)
    reply = replies.nth(count - 1)
    try:
        expect(reply.locator(".chatllm-receipt")).to_have_count(1, timeout=LONG_WAIT)
    except AssertionError as exc:  # what came instead (an error shown as a message?)
        shown = page.locator('[data-step-type="assistant_message"]').all_inner_texts()
        raise AssertionError(f"no receipt under reply {count}; the page shows {shown}") from exc
    return reply_text(reply)


def reply_text(reply: Locator) -> str:
    """A reply's words as shown, leaving out the views under it (its receipt)."""
    return str(
        reply.evaluate(
            """node => {
                const copy = node.cloneNode(true);
                copy.querySelectorAll('.chatllm-receipt').forEach(e => e.remove());
                return copy.innerText;
            }"""
        )
    )


def sidebar_thread(page: Page, name: str) -> Locator:
    return page.locator("#thread-history span.truncate", has_text=name)


def eventually(
    found: Callable[[], list[dict[str, Any]]], count: int = 1, seconds: float = 30
) -> list[Any]:
    """`found()` once it finds `count` rows (a reply is stored just after the page shows
    it), polling: a bound, not a measure."""
    for _ in range(int(seconds / 0.05)):
        if len(result := found()) >= count:
            return result
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} stored")


def fresh_chat(page: Page, app: App) -> None:
    """The app's page opened anew on a new chat: each test starts from here, whatever the
    tests before it left on the page."""
    page.goto(app.base)
    ready(page)


def new_chat(page: Page) -> None:
    """Start a new chat from the header button, unless the page already shows one."""
    if page.locator(QUESTION).count():
        page.locator("#new-chat-button").click()
        page.locator("#confirm").click()  # the app asks before leaving a chat
        expect(page.locator(QUESTION)).to_have_count(0)
    ready(page)


def ready(page: Page) -> None:
    """Wait for a fresh chat: its welcome screen shown, the sliders sent by the server."""
    expect(page.locator("#welcome-screen")).to_be_visible(timeout=30_000)
    expect(page.locator("#chat-settings-open-modal")).to_be_visible(timeout=30_000)


def slider(page: Page, widget: str) -> Locator:
    return page.locator(f"#{widget} [role=slider]")


def set_slider(page: Page, widget: str, value: float, step: float) -> None:
    """Move a settings slider with the keyboard, as a person can."""
    thumb = slider(page, widget)
    current = float(thumb.get_attribute("aria-valuenow") or 0)
    key = "ArrowRight" if value > current else "ArrowLeft"
    for _ in range(round(abs(value - current) / step)):
        thumb.press(key)
    expect(thumb).to_have_attribute("aria-valuenow", f"{value:g}")


# ---- 1. first visit


def test_first_visit_shows_the_welcome_page_without_a_login(local_app: App, browser: Page) -> None:
    browser.goto(local_app.base)
    ready(browser)
    expect(browser.locator("#email")).to_have_count(0)  # no login page in local mode
    shot(browser, "01-first-visit")
    browser.locator("#readme-button").click()
    expect(browser.get_by_text("Welcome to chatllm")).to_be_visible()
    shot(browser, "01-welcome-readme")
    browser.keyboard.press("Escape")


def test_a_starter_sends_its_prompt_under_its_preset(local_app: App, browser: Page) -> None:
    """The welcome page's starters are a run-sheet: one click sends the prompt, and the
    code question is answered under the Code assistant preset."""
    fresh_chat(browser, local_app)
    starters = browser.locator("#starters button")
    expect(starters).to_have_count(4)
    shot(browser, "01-starters")
    prompt = "Write a Python function that tells whether a word is a palindrome, with two tests."
    browser.get_by_role("button", name="Write a Python function").click()
    expect(browser.locator(QUESTION, has_text=prompt)).to_be_visible(timeout=30_000)
    wait_for_reply(browser, 1)
    (stored,) = eventually(lambda: local_app.replies(prompt))
    assert stored["metadata"]["receipt"]["sampling"]["temperature"] == 0.4
    expect(browser.locator(".chatllm-receipt").last).to_contain_text("T 0.4")
    shot(browser, "01-starter-answered")


# ---- 2. a reply streams in


def test_a_message_gets_a_streamed_reply(local_app: App, browser: Page) -> None:
    fresh_chat(browser, local_app)
    # Every length the reply's text takes on the page, as the browser renders it.
    browser.evaluate(
        """(selector) => {
            window.replyLengths = [];
            window.replyWatch = new MutationObserver(() => {
                const reply = document.querySelector(selector);
                if (reply) window.replyLengths.push(reply.innerText.length);
            });
            window.replyWatch.observe(
                document.body, {subtree: true, childList: true, characterData: true}
            );
        }""",
        REPLY,
    )
    send(browser, "Hello! What is a lighthouse?")
    expect(browser.locator(QUESTION)).to_have_count(1)
    first_text = browser.locator(REPLY).first
    expect(first_text).not_to_be_empty(timeout=LONG_WAIT)
    shot(browser, "02-streaming")
    reply = wait_for_reply(browser, 1)
    assert reply.strip()
    lengths = [
        n for n in browser.evaluate("window.replyWatch.disconnect() || window.replyLengths") if n
    ]
    # It appeared a piece at a time: several shorter texts were shown before the whole.
    assert len(set(lengths)) >= 5 and min(lengths) < len(reply) // 2
    shot(browser, "02-reply")
    (stored,) = eventually(lambda: local_app.replies("Hello! What is a lighthouse?"))
    assert words(stored["output"]) == words(reply)  # the same text, as markdown renders it


# ---- 3. sliders change the next reply


def set_sliders(page: Page, temperature: float, top_p: float) -> None:
    page.locator("#chat-settings-open-modal").click()
    set_slider(page, "temperature", temperature, 0.05)
    set_slider(page, "top_p", top_p, 0.01)
    shot(page, "03-settings")
    page.get_by_role("button", name="Confirm").click()


def test_the_settings_panel_opens_on_the_sliders_with_presets_on_a_tab_of_their_own(
    local_app: App, browser: Page
) -> None:
    fresh_chat(browser, local_app)
    browser.locator("#chat-settings-open-modal").click()
    dialog = browser.get_by_role("dialog")
    expect(dialog.get_by_role("tab", name="Sampling")).to_have_attribute("aria-selected", "true")
    controls = "[role=slider], input, textarea, [role=combobox], [role=switch]"
    first = dialog.get_by_role("tabpanel").locator(controls).first
    assert first.evaluate("e => e.closest('#temperature') !== null")  # the first control
    expect(dialog.locator("#preset")).to_have_count(0)  # presets are apart
    shot(browser, "03-settings-opens-on-sliders")
    dialog.get_by_role("tab", name="Presets").click()
    expect(dialog.get_by_role("tab", name="Presets")).to_have_attribute("aria-selected", "true")
    expect(dialog.locator("#preset")).to_be_visible()
    expect(dialog.locator("#save_preset")).to_be_visible()
    expect(dialog.get_by_role("switch")).to_have_count(0)  # deleting is a button elsewhere
    shot(browser, "03-settings-presets-tab")
    browser.keyboard.press("Escape")


def test_new_slider_values_make_the_next_reply(local_app: App, browser: Page) -> None:
    fresh_chat(browser, local_app)
    send(browser, "What colour is the sea?")
    wait_for_reply(browser, 1)
    set_sliders(browser, temperature=0.4, top_p=0.5)
    send(browser, "Tell me one fact about the sea.")
    wait_for_reply(browser, 2)
    shot(browser, "03-reply-with-new-settings")
    before, after = (
        r["metadata"]["receipt"]["sampling"]
        for r in eventually(lambda: local_app.replies("What colour is the sea?"), count=2)
    )
    assert (before["temperature"], before["top_p"]) == (0.7, 0.95)  # the defaults
    assert (after["temperature"], after["top_p"]) == (0.4, 0.5)


def choose_preset(page: Page, label: str) -> None:
    """Choose a preset from the menu on the panel's Presets tab."""
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("tab", name="Presets").click()
    dialog.locator("#preset").click()
    page.get_by_role("option", name=label, exact=True).click()


def test_presets_keep_a_slider_moved_with_them_and_refusals_are_never_stored(
    local_app: App, browser: Page
) -> None:
    """A new chat's menu names the preset its sliders hold; a preset named like a built-in
    one is refused in words, and the built-in one stays in the menu; a chosen preset moves
    the sliders at once (Cancel puts them back); a slider moved after it is kept on Confirm,
    and the panel shows it; the refusal is
    the person's alone: the thread their first message makes holds the conversation only."""
    fresh_chat(browser, local_app)
    browser.locator("#chat-settings-open-modal").click()
    dialog = browser.get_by_role("dialog")
    dialog.get_by_role("tab", name="Presets").click()
    expect(dialog.locator("#preset")).to_have_text("Balanced")  # the default sliders
    dialog.locator("#save_preset").fill(" balanced ")
    browser.get_by_role("button", name="Confirm").click()
    refusal = browser.get_by_text("is a built-in name in the preset menu")
    expect(refusal).to_be_visible(timeout=30_000)
    shot(browser, "03-preset-name-refused")

    # Choosing a preset moves the sliders at once, before Confirm; Cancel puts them back.
    browser.locator("#chat-settings-open-modal").click()
    set_slider(browser, "temperature", 0.15, 0.05)
    choose_preset(browser, "Creative")
    dialog.get_by_role("tab", name="Sampling").click()
    expect(slider(browser, "temperature")).to_have_attribute("aria-valuenow", "1.1")
    expect(slider(browser, "top_k")).to_have_attribute("aria-valuenow", "100")
    shot(browser, "03-preset-moves-the-sliders")
    browser.get_by_role("button", name="Cancel").click()
    browser.locator("#chat-settings-open-modal").click()
    expect(slider(browser, "temperature")).to_have_attribute("aria-valuenow", "0.7")
    expect(slider(browser, "top_k")).to_have_attribute("aria-valuenow", "40")
    choose_preset(browser, "Creative")  # the same choice again, after the Cancel
    dialog.get_by_role("tab", name="Sampling").click()
    expect(slider(browser, "top_k")).to_have_attribute("aria-valuenow", "100")
    set_slider(browser, "temperature", 0.15, 0.05)  # moved after the preset: theirs
    browser.get_by_role("button", name="Confirm").click()
    expect(browser.get_by_text("keeping what you moved yourself")).to_be_visible(timeout=30_000)
    browser.locator("#chat-settings-open-modal").click()
    expect(slider(browser, "temperature")).to_have_attribute("aria-valuenow", "0.15")
    expect(slider(browser, "top_k")).to_have_attribute("aria-valuenow", "100")  # Creative's
    dialog.get_by_role("tab", name="Presets").click()
    expect(dialog.locator("#preset")).to_have_text("Custom")
    dialog.locator("#preset").click()
    expect(browser.get_by_role("option", name="Balanced", exact=True)).to_have_count(1)
    shot(browser, "03-preset-and-moved-slider")
    browser.keyboard.press("Escape")  # the menu
    browser.keyboard.press("Escape")  # the panel

    question = "Name one colour of a lighthouse."
    send(browser, question)
    wait_for_reply(browser, 2)  # the refusal is on the page above it, as an error
    (stored,) = eventually(lambda: local_app.replies(question))
    sampling = stored["metadata"]["receipt"]["sampling"]
    assert (sampling["temperature"], sampling["top_k"]) == (0.15, 100)
    with sqlite3.connect(local_app.data_dir / "chatllm.db") as raw:
        steps = raw.execute(
            "SELECT type, is_error FROM steps WHERE thread_id = ? AND type LIKE '%message'"
            " ORDER BY seq",
            (stored["thread"],),
        ).fetchall()
    assert steps == [("user_message", 0), ("assistant_message", 0)]
    browser.reload()  # the thread as stored: the conversation, not the refusal
    expect(browser.locator(QUESTION, has_text=question)).to_be_visible(timeout=30_000)
    expect(browser.locator(REPLY)).to_have_count(1)
    expect(refusal).to_have_count(0)
    shot(browser, "03-refusal-not-stored")


# ---- 4. reload and resume


def test_a_reloaded_thread_resumes_with_messages_settings_and_memory(
    local_app: App, browser: Page
) -> None:
    fresh_chat(browser, local_app)
    send(browser, "Where do lighthouses stand?")
    wait_for_reply(browser, 1)
    set_sliders(browser, temperature=0.4, top_p=0.5)
    send(browser, "How tall is a lighthouse?")
    wait_for_reply(browser, 2)
    browser.reload()
    item = sidebar_thread(browser, "Where do lighthouses stand?")
    expect(item).to_be_visible(timeout=30_000)
    shot(browser, "04-sidebar")
    item.click()
    expect(browser.locator(QUESTION)).to_have_count(2, timeout=30_000)
    expect(browser.locator(REPLY)).to_have_count(2)
    shot(browser, "04-resumed")
    browser.locator("#chat-settings-open-modal").click()
    expect(slider(browser, "temperature")).to_have_attribute("aria-valuenow", "0.4")
    expect(slider(browser, "top_p")).to_have_attribute("aria-valuenow", "0.5")
    browser.keyboard.press("Escape")
    send(browser, "And what did I ask first?")
    wait_for_reply(browser, 3)
    shot(browser, "04-follow-up")
    replies = eventually(lambda: local_app.replies("Where do lighthouses stand?"), count=3)
    assert len(replies) == 3  # the follow-up went on in the same thread
    # The model saw the system prompt, both exchanges and the new question.
    assert replies[-1]["metadata"]["receipt"]["prompt_messages"] == 6


def send_back_to_login_once(page: Page) -> None:
    """What Chainlit's page does now and then after logging in (seen in CI): at "/", before
    it has read the new user, it sends the page back to its login page, whose referrer is
    then "/". Here it happens once, late: 0.4 s at "/", so that it cancels the thread page
    the app has asked for by then (held back a second)."""
    page.add_init_script(
        """
        const push = history.pushState.bind(history);
        history.pushState = (state, title, url) => {
          push(state, title, url);
          if (location.pathname === "/") {
            setTimeout(() => {
              if (!sessionStorage.getItem("test.second-trip")) {
                sessionStorage.setItem("test.second-trip", "1");
                location.href = "/login";
              }
            }, 400);
          }
        };
        """
    )
    asked = {"thread": 0}

    def hold_the_second_thread_page(route: Route) -> None:
        if route.request.resource_type == "document":
            asked["thread"] += 1
            if asked["thread"] == 2:  # the first after logging in
                time.sleep(1.0)
        route.continue_()

    page.route("**/thread/*", hold_the_second_thread_page)


# ---- 5. rename and delete


def test_threads_are_renamed_and_deleted_from_the_sidebar(
    local_app: App, browser: Page, playwright: Playwright, tmp_path: Path
) -> None:
    fresh_chat(browser, local_app)
    send(browser, "A thread to rename")
    wait_for_reply(browser, 1)
    renamed_url = browser.url
    assert "/thread/" in renamed_url
    # Its link, opened in a browser that has no cookie yet (local mode's login happens on
    # the way), opens the thread, not a new chat.
    for second_trip in (False, True):
        stranger = open_browser(playwright, tmp_path)
        try:
            page = stranger.pages[0] if stranger.pages else stranger.new_page()
            if second_trip:
                send_back_to_login_once(page)
            page.goto(renamed_url)
            expect(page.locator(REPLY)).to_have_count(1, timeout=LONG_WAIT)
            expect(page.get_by_text("A thread to rename").first).to_be_visible()
            assert page.url == renamed_url
            if not second_trip:
                shot(page, "05-thread-link-in-a-new-browser")
        finally:
            stranger.close()
    new_chat(browser)  # the header's button
    send(browser, "A thread to delete")
    wait_for_reply(browser, 1)
    browser.reload()
    deleted_url = browser.url  # the thread deleted below is the one that is open
    assert "/thread/" in deleted_url
    for old, action in (
        ("A thread to rename", "rename"),
        ("A thread to delete", "delete"),
    ):
        item = sidebar_thread(browser, old)
        expect(item).to_be_visible(timeout=30_000)
        item.hover()
        row = item.locator("xpath=ancestor::*[.//*[@id='thread-options']][1]")
        row.locator("#thread-options").click()
        browser.locator(f"#{action}-thread").click()
        if action == "rename":
            browser.locator("#name").fill("灯塔 notes")
        browser.get_by_role("button", name="Confirm").click()
        done = "Thread renamed!" if action == "rename" else "Chat deleted"
        expect(browser.get_by_text(done)).to_be_visible(timeout=30_000)
        shot(browser, f"05-{action}d")
    # Deleting the open thread leaves it: the page is a new chat, whose next message makes
    # a thread of its own.
    ready(browser)
    expect(browser.locator(REPLY)).to_have_count(0)
    assert browser.url != deleted_url
    send(browser, "A chat after the deletion")
    wait_for_reply(browser, 1)
    assert browser.url != deleted_url
    browser.reload()
    expect(sidebar_thread(browser, "灯塔 notes")).to_be_visible(timeout=30_000)
    expect(sidebar_thread(browser, "A thread to delete")).to_have_count(0)
    expect(sidebar_thread(browser, "A thread to rename")).to_have_count(0)
    shot(browser, "05-after-reload")
    # The deleted thread does not come back when its tab's session is saved (Chainlit saves
    # it as the socket closes): another page load, then the database.
    fresh_chat(browser, local_app)
    expect(sidebar_thread(browser, "灯塔 notes")).to_be_visible(timeout=30_000)
    assert "灯塔 notes" in local_app.threads()
    assert "A thread to delete" not in local_app.threads()
    assert local_app.replies("A thread to delete") == []


# ---- 6. stop


def test_stop_ends_the_reply_and_the_partial_reply_survives_a_reload(
    local_app: App, browser: Page
) -> None:
    fresh_chat(browser, local_app)
    send(browser, "Write a very long story about a lighthouse keeper and the sea.")
    reply = browser.locator(REPLY).first
    expect(reply).not_to_be_empty(timeout=LONG_WAIT)
    # Some of the story on the page, while it is still being written.
    browser.wait_for_function(
        "(selector) => document.querySelector(selector).innerText.length > 80",
        arg=REPLY,
        timeout=LONG_WAIT,
    )
    # The engine frozen mid-reply until the Stop has reached the app, however busy the machine.
    (engine,) = children(local_app.server.process.pid)  # type: ignore[union-attr]
    os.kill(engine, signal.SIGSTOP)
    try:
        browser.locator("#stop-button").click()
        expect(browser.get_by_text("Task manually stopped.")).to_be_visible(timeout=30_000)
    finally:
        os.kill(engine, signal.SIGCONT)
    expect(browser.locator("#stop-button")).to_have_count(0, timeout=30_000)
    partial = reply.inner_text()
    shot(browser, "06-stopped")
    # Stored as the stopped turn ends, just after the page shows it.
    (stopped,) = eventually(
        lambda: local_app.replies("Write a very long story about a lighthouse keeper and the sea.")
    )
    assert stopped["metadata"]["finish_reason"] == "cancelled"
    assert stopped["output"].strip()
    browser.reload()
    sidebar_thread(browser, "Write a very long story").click()
    expect(browser.locator(REPLY).first).to_contain_text(partial.strip()[:40], timeout=30_000)
    shot(browser, "06-after-reload")


# ---- 8. no HTML or script from a message runs


def test_html_in_a_message_shows_as_text_and_runs_nothing(local_app: App, browser: Page) -> None:
    fresh_chat(browser, local_app)
    attack = "<img src=x onerror=alert(1)> and <script>alert(2)</script>"
    send(browser, attack)
    question = browser.locator(QUESTION).last
    expect(question).to_contain_text("<img src=x onerror=alert(1)>")
    expect(question).to_contain_text("<script>alert(2)</script>")
    wait_for_reply(browser, 1)
    browser.reload()
    # The page rendered the conversation again before anything is said to be absent.
    expect(browser.locator(QUESTION).last).to_contain_text("<script>alert(2)</script>")
    expect(browser.locator(REPLY)).to_have_count(1)
    shot(browser, "08-html-as-text")
    assert browser.dialogs == []  # type: ignore[attr-defined]
    assert browser.locator("img[src=x]").count() == 0


# ---- 9. Chinese


#: Words a Chinese page may show in Latin letters: names (the app, the model, llama.cpp,
#: Python, a QR code) and the samplers' own terms (top_p, top_k).
# Names, not words: the app's, the model's, its software's, two sliders' ("Top P"), a
# code's and a key's (the toasts' region is reached with Alt+T).
#: Names, not words: the app's, the model's, and the samplers' (Top P, Min P, Mirostat).
LATIN_NAMES = {
    *("chatllm", "smollm", "instruct", "llama", "cpp", "python", "qr", "alt"),
    *("top", "min", "mirostat"),
}


def english(text: str) -> set[str]:
    """Words of three or more Latin letters in `text` that are not names."""
    return {w for w in re.findall(r"[A-Za-z]{3,}", text) if w.lower() not in LATIN_NAMES}


def shown_and_named(page: Page, scope: str = "body") -> str:
    """What the page shows in `scope` and names there for a screen reader (labels,
    titles, placeholders, alternative texts), less what the model and the user wrote and
    the values in its fields (the system prompt is the user's to write) and the threads'
    names in the sidebar."""
    return str(
        page.evaluate(
            """(scope) => {
                const root = document.querySelector(scope);
                const copy = root.cloneNode(true);
                // What is not drawn (display: none) is neither shown nor read out.
                const originals = [...root.querySelectorAll('*')];
                const copies = [...copy.querySelectorAll('*')];
                originals.forEach((node, i) => {
                    if (getComputedStyle(node).display === 'none') copies[i].remove();
                });
                copy.querySelectorAll(
                    '[data-step-type] .message-content, .chatllm-compare-text, .chatllm-diff-text,'
                    + ' textarea, input, #thread-history span.truncate'
                ).forEach((words) => words.remove());
                const named = '[aria-label], [title], [placeholder], img[alt]';
                const names = [...root.querySelectorAll(named)]
                    .filter((node) => node.checkVisibility())
                    .map((node) => ['aria-label', 'title', 'placeholder', 'alt']
                        .map((a) => node.getAttribute(a) || '').join(' '));
                return copy.innerText + ' ' + names.join(' ');
            }""",
            scope,
        )
    )


def test_a_zh_tw_browser_gets_the_chinese_welcome_page_and_panel_with_every_glyph_drawn(
    local_app: App, playwright: Playwright, tmp_path: Path
) -> None:
    """What the page renders, every character of it, has a glyph in the browser's fonts
    (the welcome page's heading once ended in an empty box)."""
    context = open_browser(playwright, tmp_path, locale="zh-TW")
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(local_app.base)
    expect(page.locator("#chat-input")).to_be_visible(timeout=60_000)
    ready(page)
    assert missing_glyphs(page.locator("body").inner_text()) == set()
    assert english(shown_and_named(page)) == set()  # nothing left in English, shown or named
    shot(page, "09-zh-TW-start")
    page.locator("#readme-button").click()
    expect(page.get_by_text("歡迎使用 chatllm")).to_be_visible()
    assert missing_glyphs(page.locator("body").inner_text()) == set()
    shot(page, "09-zh-TW-welcome")
    page.keyboard.press("Escape")
    page.locator("#chat-settings-open-modal").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("tab", name="取樣")).to_have_attribute("aria-selected", "true")
    assert missing_glyphs(dialog.inner_text()) == set()
    assert english(shown_and_named(page, "[role=dialog]")) == set()
    shot(page, "09-zh-TW-settings")
    dialog.get_by_role("tab", name="預設組合").click()
    expect(dialog.locator("#preset")).to_be_visible()
    assert missing_glyphs(dialog.inner_text()) == set()
    shot(page, "09-zh-TW-presets")
    page.keyboard.press("Escape")
    page.get_by_role("button", name="比較精確與創意").click()  # a starter: a comparison
    columns = page.locator(".chatllm-compare-column")
    expect(columns).to_have_count(3, timeout=LONG_WAIT)
    expect(page.locator(".chatllm-diff")).to_be_visible(timeout=LONG_WAIT)
    expect(columns.nth(1)).to_contain_text("精確")
    receipts = page.locator(".chatllm-compare-receipt")
    expect(receipts.nth(2)).to_contain_text("個詞元", timeout=LONG_WAIT)
    # What the app writes: the view less the model's own words (a small model writes
    # symbols no font has, 🗧 among them; those are the model's, not the page's).
    written = page.evaluate(
        """() => [...document.querySelectorAll(".chatllm-compare")].map((view) => {
            const copy = view.cloneNode(true);
            copy.querySelectorAll(".chatllm-compare-text, .chatllm-diff-text")
                .forEach((words) => words.remove());
            return copy.textContent;
        }).join(" ")"""
    )
    assert "精確" in written
    assert missing_glyphs(written + page.locator("#message-composer").inner_text()) == set()
    assert english(written) == set()
    shot(page, "09-zh-TW-compare")
    send(page, "你好，請用一句話介紹你自己。")
    wait_for_reply(page, 2)
    receipt = page.locator(".chatllm-receipt").last
    expect(receipt).to_contain_text("每秒")
    receipt.get_by_role("button").click()  # every value, in Chinese
    expect(receipt.locator("table")).to_contain_text("首個詞元")
    assert missing_glyphs(receipt.inner_text()) == set()
    # The sliders' names and why it ended in words; the system prompt is the user's own.
    system_prompt = Settings(_env_file=None).system_prompt  # type: ignore[call-arg]
    assert english(receipt.inner_text().replace(system_prompt, "")) == set()
    assert english(shown_and_named(page)) == set()
    shot(page, "09-zh-TW-reply-and-receipt")
    # A rename to blanks is refused in the app's words alone: no HTTP status in English.
    item = page.locator("#thread-history span.truncate").first
    item.hover()
    item.locator("xpath=ancestor::*[.//*[@id='thread-options']][1]").locator(
        "#thread-options"
    ).click()
    page.locator("#rename-thread").click()
    page.locator("#name").fill("   ")
    page.get_by_role("button", name="確認").click()
    toasts = page.locator("[data-sonner-toast]:visible")
    expect(toasts.filter(has_text="對話需要名稱")).to_have_count(1, timeout=30_000)
    page.wait_for_timeout(500)  # both of Chainlit's toasts are up by now
    assert english(" ".join(toasts.all_inner_texts())) == set(), toasts.all_inner_texts()
    assert english(shown_and_named(page)) == set()
    shot(page, "09-zh-TW-rename-refused")
    context.close()


# ---- 10. receipts, replay and compare


def test_replies_show_receipts_replay_matches_and_compare_runs_side_by_side(
    local_app: App, browser: Page
) -> None:
    fresh_chat(browser, local_app)
    send(browser, "Name two colours of the sea.")
    wait_for_reply(browser, 1)
    receipt = browser.locator(".chatllm-receipt").last
    expect(receipt).to_contain_text("tok/s")
    expect(receipt).to_contain_text("seed")
    (stored,) = eventually(lambda: local_app.replies("Name two colours of the sea."))
    seed = stored["metadata"]["receipt"]["sampling"]["seed"]
    expect(receipt).to_contain_text(f"seed {seed}")
    receipt.get_by_role("button").click()  # every value, on click
    expect(receipt.locator("table")).to_contain_text("time to first token")
    shot(browser, "10-receipt")

    browser.get_by_role("button", name="Replay").last.click()
    expect(browser.get_by_text(f"Replay with seed {seed}: identical text ✓")).to_be_visible(
        timeout=LONG_WAIT
    )
    shot(browser, "10-replay")

    browser.get_by_role("button", name="Regenerate").first.click()
    variant = browser.locator(".chatllm-receipt-title", has_text="Variant 2")
    expect(variant).to_be_visible(timeout=LONG_WAIT)
    expect(browser.locator("#stop-button")).to_have_count(0, timeout=LONG_WAIT)
    first_reply, regenerated = eventually(
        lambda: local_app.replies("Name two colours of the sea."), count=2
    )
    assert regenerated["metadata"]["kind"] == "variant"
    assert regenerated["metadata"]["reply_to"] == first_reply["metadata"]["reply_to"]
    # The new reply stands where the first stood, the first a switch away: ‹ 2/2 ›.
    expect(browser.locator(".chatllm-receipt")).to_have_count(1)
    switcher = browser.locator(".chatllm-branches")
    expect(switcher).to_have_count(1)
    expect(switcher).to_contain_text("2/2")
    shot(browser, "10-variants")
    switcher.get_by_role("button", name="Previous version").click()
    expect(switcher).to_contain_text("1/2", timeout=30_000)
    expect(variant).to_have_count(0)  # the first reply again, with its replay under it
    expect(browser.get_by_text(f"Replay with seed {seed}: identical text ✓")).to_be_visible()
    browser.reload()  # the switch was saved: the same branch after a reload
    expect(browser.locator(".chatllm-branches")).to_contain_text("1/2", timeout=60_000)
    expect(browser.locator(".chatllm-receipt-title", has_text="Variant 2")).to_have_count(0)
    # From the keyboard: the next version, then back.
    following = browser.locator(".chatllm-branches").get_by_role("button", name="Next version")
    following.focus()
    browser.keyboard.press("Enter")
    expect(browser.locator(".chatllm-branches")).to_contain_text("2/2", timeout=30_000)
    expect(browser.locator(".chatllm-receipt-title", has_text="Variant 2")).to_be_visible()
    shot(browser, "10-switched")

    browser.get_by_role("button", name="Compare").first.click()
    send(browser, "Describe the sea in one sentence.")
    columns = browser.locator(".chatllm-compare-column")
    expect(columns).to_have_count(3, timeout=LONG_WAIT)
    expect(browser.locator(".chatllm-diff")).to_be_visible(timeout=LONG_WAIT)
    expect(columns.nth(1)).to_contain_text("Code assistant")
    for index in range(3):
        expect(columns.nth(index).locator(".chatllm-compare-receipt")).to_contain_text("tok/s")
    shot(browser, "10-compare")
    browser.reload()
    expect(browser.locator(".chatllm-compare-column")).to_have_count(3, timeout=60_000)
    expect(browser.locator(".chatllm-receipt").first).to_contain_text("tok/s")
    shot(browser, "10-compare-after-reload")
    # On a phone the columns stack, each as wide as the chat: three 100-px columns broke
    # words mid-word.
    browser.set_viewport_size({"width": 390, "height": 844})
    try:
        columns = browser.locator(".chatllm-compare-column")
        expect(columns).to_have_count(3)
        boxes = [columns.nth(index).bounding_box() for index in range(3)]
        assert all(box is not None for box in boxes)
        tops = [box["y"] for box in boxes if box]
        assert tops == sorted(tops) and len(set(tops)) == 3, boxes  # one under another
        assert min(box["width"] for box in boxes if box) >= 250, boxes
        shot(browser, "10-compare-on-a-phone")
    finally:
        browser.set_viewport_size({"width": 1280, "height": 860})


# ---- 7. multi-user mode


def test_multi_user_mode_logs_in_and_keeps_threads_apart(
    playwright: Playwright, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data_dir = tmp_path_factory.mktemp("browser-multi")
    add_users(data_dir, "ada", "bob")
    app = start_app(data_dir)
    tmp = tmp_path_factory.mktemp("chromium-multi")
    try:
        ada = open_browser(playwright, tmp).new_page()
        ada.goto(app.base)
        expect(ada.locator("#email")).to_be_visible(timeout=60_000)
        shot(ada, "07-login-page")
        login(ada, "ada", "wrong-password")
        expect(ada.locator("#email")).to_be_visible()
        expect(ada.get_by_text(re.compile("credentials|incorrect|invalid", re.I))).to_be_visible()
        shot(ada, "07-wrong-password")
        login(ada, "ada", "ada-password-123")
        ready(ada)
        shot(ada, "07-logged-in")
        send(ada, "Ada's private question about lighthouses")
        wait_for_reply(ada, 1)
        (stored,) = eventually(app.replies)
        thread_url = f"{app.base}/thread/{stored['thread']}"

        bob = open_browser(playwright, tmp).new_page()
        bob.goto(app.base)
        login(bob, "bob", "bob-password-123")
        expect(bob.locator("#chat-input")).to_be_visible(timeout=60_000)
        bob.goto(thread_url)
        # Refused, and the page says so, before anything is said to be absent.
        expect(bob.get_by_text("Couldn't resume chat")).to_be_visible(timeout=30_000)
        expect(bob.get_by_text("No threads found")).to_be_visible()
        shot(bob, "07-other-users-thread")
        body = bob.locator("body").inner_text()
        assert "private question" not in body
        assert stored["output"][:30] not in body
        expect(sidebar_thread(bob, "private question")).to_have_count(0)
    finally:
        stop_app(app)


def add_users(data_dir: Path, *names: str) -> None:
    """Password users NAME with the password NAME-password-123, as an operator adds them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLLM_")}
    for name in names:
        subprocess.run(
            [sys.executable, "-m", "chatllm", "users", "add", name, "--password-stdin"],
            input=f"{name}-password-123\n",
            text=True,
            cwd=ROOT,
            env={**env, "CHATLLM_DATA_DIR": str(data_dir)},
            check=True,
            capture_output=True,
        )


def login(page: Page, name: str, password: str) -> None:
    page.locator("#email").fill(name)
    page.locator("#password").fill(password)
    page.locator("#password").press("Enter")


# ---- share links


def test_a_shared_thread_opens_read_only_for_another_user_until_it_is_unshared(
    playwright: Playwright, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Ada (zh-TW) shares her thread with the Share command; Bob opens the link before
    logging in, logs in and lands on it: her messages and receipts, no message box, no
    feedback buttons. She stops sharing from Chainlit's own share dialog, in Chinese, and
    his next visit finds nothing."""
    data_dir = tmp_path_factory.mktemp("browser-share")
    add_users(data_dir, "ada", "bob")
    app = start_app(data_dir)
    tmp = tmp_path_factory.mktemp("chromium-share")
    try:
        ada = open_browser(playwright, tmp, locale="zh-TW").new_page()
        ada.goto(app.base)
        login(ada, "ada", "ada-password-123")
        ready(ada)
        question = "Ada's question about tides"
        send(ada, question)
        answer = wait_for_reply(ada, 1)
        ada.locator("#command-分享").click()  # the command (the header's is Chainlit's dialog)
        ada.locator("#chat-submit").click()
        notice = ada.locator(".step", has_text="此對話已分享").last
        expect(notice).to_be_visible(timeout=30_000)
        (stored,) = eventually(lambda: app.replies(question))
        link = f"{app.base}/share/{stored['thread']}"
        expect(notice).to_contain_text(link)
        expect(notice).to_contain_text("其他裝置無法開啟")  # a loopback address, said so
        qr = notice.get_by_role("img", name="分享連結的 QR 碼")
        expect(qr).to_be_visible()
        assert qr.evaluate("img => img.complete && img.naturalWidth > 100")
        assert not missing_glyphs(notice.inner_text())
        shot(ada, "15-share-link-and-qr-zh-TW")

        bob = open_browser(playwright, tmp).new_page()
        bob.goto(link)
        expect(bob.locator("#email")).to_be_visible(timeout=60_000)  # log in first
        login(bob, "bob", "bob-password-123")
        bob.wait_for_url(link, timeout=30_000)  # then on to the link, not the home page
        expect(bob.locator(QUESTION, has_text=question)).to_be_visible(timeout=30_000)
        expect(bob.locator(REPLY).first).to_contain_text(words(answer)[0])
        seed = stored["metadata"]["receipt"]["sampling"]["seed"]
        # The sharer's language: Ada's page is in zh-TW.
        expect(bob.locator(".chatllm-receipt").first).to_contain_text(f"種子 {seed}")
        expect(bob.locator("#chat-input")).to_have_count(0)  # nothing to send with
        feedback = bob.locator(".positive-feedback-off, .negative-feedback-off")
        expect(feedback.first).to_be_hidden()  # Chainlit shows them, greyed out
        expect(ada.locator(".positive-feedback-off").first).to_be_visible()  # hers, on her page
        assert serious_violations(bob) == []
        shot(bob, "15-shared-thread-read-only")

        ada.reload()  # Chainlit's dialog learns what is shared from the thread list it loads
        expect(ada.locator(QUESTION, has_text=question)).to_be_visible(timeout=60_000)
        ada.locator("#header button:has(svg.lucide-share2)").click()  # Chainlit's share dialog
        unshare = ada.get_by_role("dialog").get_by_role("button", name="取消分享")
        expect(unshare).to_be_visible(timeout=30_000)  # Chainlit writes "Unshare" in English
        shot(ada, "15-share-dialog-zh-TW")
        unshare.click()
        expect(ada.get_by_role("dialog")).to_have_count(0)
        bob.goto(link)
        bob.wait_for_url(f"{app.base}/", timeout=30_000)  # Chainlit's view gives up on it
        expect(bob.locator(QUESTION, has_text=question)).to_have_count(0)
        shot(bob, "15-unshared-link")
    finally:
        stop_app(app)


def test_an_edit_is_a_new_version_beside_the_old_and_both_survive_a_reload(
    local_app: App, browser: Page
) -> None:
    """The pencil on a message: the edited words stand where the message stood, answered
    anew, with ‹ 2/2 › under them; the first wording, its reply and what followed are a
    switch away, after a reload too."""
    fresh_chat(browser, local_app)
    send(browser, "Name a colour of the sky.")
    wait_for_reply(browser, 1)
    send(browser, "And one of grass?")
    wait_for_reply(browser, 2)
    browser.locator(QUESTION, has_text="Name a colour of the sky.").hover()
    browser.locator(QUESTION, has_text="Name a colour of the sky.").locator(".edit-message").click()
    browser.locator("#edit-chat-input").fill("Name a colour of the sea.")
    browser.locator(".confirm-edit").click()
    edited = browser.locator(QUESTION, has_text="Name a colour of the sea.")
    expect(edited).to_be_visible(timeout=30_000)
    expect(edited.locator(".chatllm-branches")).to_contain_text("2/2")
    wait_for_reply(browser, 1)
    expect(browser.locator(QUESTION, has_text="And one of grass?")).to_have_count(0)
    shot(browser, "10-edited")
    browser.reload()
    edited = browser.locator(QUESTION, has_text="Name a colour of the sea.")
    expect(edited.locator(".chatllm-branches")).to_contain_text("2/2", timeout=60_000)
    edited.locator(".chatllm-branches").get_by_role("button", name="Previous version").click()
    expect(browser.locator(QUESTION, has_text="And one of grass?")).to_be_visible(timeout=30_000)
    expect(browser.locator(QUESTION, has_text="Name a colour of the sky.")).to_be_visible()
    expect(browser.locator(REPLY)).to_have_count(2)
    asked = [m for m in local_app.replies() if m["metadata"].get("kind") == "reply"]
    assert len({r["metadata"]["reply_to"] for r in asked}) >= 3  # all three answered, kept


def test_a_version_is_deleted_after_asking_and_a_fork_opens_as_a_new_conversation(
    local_app: App, browser: Page
) -> None:
    fresh_chat(browser, local_app)
    send(browser, "Name a colour of a lemon.")
    wait_for_reply(browser, 1)
    browser.get_by_role("button", name="Regenerate").first.click()
    switcher = browser.locator(".chatllm-branches")
    expect(switcher).to_contain_text("2/2", timeout=LONG_WAIT)
    expect(browser.locator("#stop-button")).to_have_count(0, timeout=LONG_WAIT)
    switcher.get_by_role("button", name="Delete this version").click()
    expect(browser.get_by_text("Delete version 2 and everything after it")).to_be_visible()
    assert len(local_app.replies("Name a colour of a lemon.")) == 2  # asked, not deleted
    browser.get_by_role("button", name="Delete", exact=True).click()
    expect(browser.locator(".chatllm-branches")).to_have_count(0, timeout=30_000)
    expect(browser.locator(REPLY)).to_have_count(1)
    assert len(eventually(lambda: local_app.replies("Name a colour of a lemon."))) == 1
    shown = reply_text(browser.locator(REPLY).first)
    browser.get_by_role("button", name="Fork").first.click()
    link = browser.get_by_role("link", name="open it")
    expect(link).to_be_visible(timeout=30_000)
    with browser.context.expect_page() as opened:  # the chat opens links in a new tab
        link.click()
    fork = opened.value
    try:
        expect(fork.locator(QUESTION, has_text="Name a colour of a lemon.")).to_be_visible(
            timeout=60_000
        )
        expect(fork.locator(REPLY)).to_have_count(1, timeout=30_000)
        assert reply_text(fork.locator(REPLY).first) == shown
        expect(fork.get_by_text("Forked into a new conversation")).to_have_count(0)
    finally:
        fork.close()
    expect(sidebar_thread(browser, "Fork: Name a colour of a lemon.")).to_be_visible()


def test_the_xray_shows_each_tokens_candidates_and_the_sliders_move_the_cut(
    local_app: App, browser: Page
) -> None:
    """A reply's X-ray: its tokens, coloured; a token's candidates with what each sampler
    kept; top_p and temperature moved in the view change the kept set at once, with no
    model call (the page runs the chain: tests/test_xray_view.py)."""
    fresh_chat(browser, local_app)
    send(browser, "Name two colours of the sea.")
    wait_for_reply(browser, 1)
    asked = len(local_app.replies())
    browser.get_by_role("button", name="X-ray").last.click()
    view = browser.locator(".chatllm-xray")
    expect(view.locator(".chatllm-xray-summary")).to_contain_text("tokens", timeout=30_000)
    tokens = view.locator(".chatllm-xray-token")
    assert tokens.count() > 0
    tokens.first.focus()  # from the keyboard
    browser.keyboard.press("Enter")
    expect(tokens.first).to_have_attribute("aria-pressed", "true")
    table = view.locator(".chatllm-xray-candidates").first
    expect(table).to_be_visible()
    kept = table.locator('tr[data-kept="true"]')
    assert kept.count() >= 1
    expect(table.locator("tbody tr")).to_have_count(10)  # the 10 candidates recorded
    shot(browser, "17-xray")
    view.locator('input[name="top_p"]').fill("0")  # the likeliest alone
    expect(kept).to_have_count(1)
    expect(table).to_contain_text("1 kept")
    expect(table.locator("tbody tr").filter(has_text="Top P")).to_have_count(9)  # by name
    view.locator('input[name="top_p"]').fill("1")
    view.locator('input[name="min_p"]').fill("0")
    view.locator('input[name="top_k"]').fill("0")
    expect(kept).to_have_count(10)  # nothing cut among the candidates recorded
    view.locator('input[name="temperature"]').fill("0")  # greedy
    expect(kept).to_have_count(1)
    expect(table).to_contain_text("temperature 0")
    view.get_by_role("button", name="Back to the reply's settings").click()
    expect(view.locator('input[name="top_p"]')).to_have_value("0.95")
    shot(browser, "17-xray-moved")
    assert len(local_app.replies()) == asked  # no model call
    # After a reload the reply's button opens it again, from the stored records. The
    # resumed page gets each button withdrawn and sent again (chatllm.chat.replies): a
    # click that lands on the withdrawn one is pressed again, as a person would.
    browser.reload()
    wait_for_reply(browser, 1)
    summary = browser.locator(".chatllm-xray-summary")
    for _ in range(3):  # bounded
        browser.get_by_role("button", name="X-ray").last.click()
        try:
            expect(summary).to_contain_text("tokens", timeout=10_000)
            break
        except AssertionError:
            continue
    expect(summary).to_contain_text("tokens")


# ---- accessibility


def serious_violations(page: Page) -> list[str]:
    """axe-core's critical and serious violations on the page as it is now."""
    assert AXE.exists(), f"no axe-core at {AXE}: `make test` installs it (npm ci in tests/a11y)"
    page.add_script_tag(path=str(AXE))
    found: list[str] = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .filter((v) => v.impact === "critical" || v.impact === "serious")
            .map((v) => `${v.impact} ${v.id}: ${v.nodes.map((n) => n.target.join(" "))}`)"""
    )
    return found


@pytest.mark.parametrize("locale", ["en-US", "zh-TW"])
def test_the_main_views_have_no_serious_accessibility_violations(
    local_app: App, playwright: Playwright, tmp_path_factory: pytest.TempPathFactory, locale: str
) -> None:
    """axe-core (from npm) over what a person sees: the start page with its starters, the
    settings panel, a reply with its receipt and buttons, the share link with its QR code.
    Chainlit's own unnamed buttons and sliders are named by public/chatllm.js, in the
    page's language, and its primary colour has the contrast text needs (theme.json)."""
    page = open_browser(playwright, tmp_path_factory.mktemp("axe"), locale=locale).new_page()
    try:
        page.goto(local_app.base)
        ready(page)
        expect(page.locator("[id^='command-']").first).to_be_enabled()  # connected
        expect(page.locator("#search-chats-button[aria-label]")).to_have_count(1)  # named
        assert page.evaluate("document.documentElement.lang") == locale
        # The command buttons' labels fade in: mid-transition their text has too little
        # contrast (a CI run once caught Compare and Share so).
        page.wait_for_function(
            "() => document.getAnimations().every((a) => a.playState !== 'running')"
        )
        views = {"start": serious_violations(page)}
        page.locator("#chat-settings-open-modal").click()
        expect(slider(page, "temperature")).to_be_visible()
        # The dialog fades in: mid-animation its text has too little contrast (a loaded
        # machine's run once caught the Presets tab so).
        page.wait_for_function(
            "() => document.getAnimations().every((a) => a.playState !== 'running')"
        )
        views["settings"] = serious_violations(page)
        page.keyboard.press("Escape")
        send(page, "Name one colour of the sea.")
        wait_for_reply(page, 1)
        expect(page.locator(".chatllm-receipt").last).to_be_visible()
        views["reply"] = serious_violations(page)
        english = locale == "en-US"
        # A second version of the reply: the switcher ‹ 2/2 › under it, then the map.
        page.get_by_role("button", name="Regenerate" if english else "重新產生").first.click()
        expect(page.locator(".chatllm-branches")).to_contain_text("2/2", timeout=LONG_WAIT)
        expect(page.locator("#stop-button")).to_have_count(0, timeout=LONG_WAIT)
        views["switcher"] = serious_violations(page)
        # The reply's X-ray, a token chosen.
        page.get_by_role("button", name="X-ray" if english else "取樣透視").last.click()
        page.locator(".chatllm-xray-token").first.click()
        expect(page.locator(".chatllm-xray-candidates").first).to_be_visible(timeout=30_000)
        views["x-ray"] = serious_violations(page)
        page.locator("#command-button").click()  # the Tools menu
        page.locator("#command-popover").get_by_text(
            "Branches" if english else "分支", exact=True
        ).click()
        page.locator("#chat-submit").click()
        rows = page.locator(".chatllm-branch-map button")
        expect(rows).to_have_count(2, timeout=30_000)
        views["branch map"] = serious_violations(page)
        rows.first.focus()  # from the keyboard: the first branch opens
        page.keyboard.press("Enter")
        expect(page.locator(".chatllm-branches")).to_contain_text("1/2", timeout=30_000)
        page.locator(f"#command-{'Share' if english else '分享'}").click()
        page.locator("#chat-submit").click()
        qr = "QR code of the share link" if english else "分享連結的 QR 碼"
        expect(page.get_by_role("img", name=qr)).to_be_visible(timeout=30_000)
        views["share"] = serious_violations(page)
        shot(page, f"16-accessible-{locale}")
        assert {view: found for view, found in views.items() if found} == {}
    finally:
        page.context.close()


def test_with_sharing_for_anyone_the_room_opens_the_link_without_an_account(
    playwright: Playwright, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """CHATLLM_SHARING=anyone: a phone with no account opens the link and reads the
    thread, in its language, every glyph drawn, with nothing to type in and nothing
    axe-core finds serious."""
    data_dir = tmp_path_factory.mktemp("browser-anyone")
    server = AppServer(data_dir, env={"CHATLLM_SHARING": "anyone"}).start()
    try:
        tab = SocketUser(server.base)

        async def chat() -> None:
            await tab.connect()
            await tab.turn("請用一句話描述燈塔。")
            await tab.client.disconnect()

        with ThreadPoolExecutor(1) as other:  # Playwright's own loop runs in this thread
            other.submit(asyncio.run, chat()).result(timeout=120)
        owner = httpx.post(server.base + "/auth/header", timeout=30).cookies
        shared = {"threadId": tab.thread_id, "isShared": True}
        assert httpx.put(
            f"{server.base}/project/thread/share", json=shared, cookies=owner
        ).is_success
        phone = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        ).new_context(
            locale="zh-TW",
            viewport={"width": 390, "height": 844},
            is_mobile=True,
            bypass_csp=True,  # for axe-core's script: the page itself runs none
        )
        page = phone.new_page()
        page.goto(f"{server.base}/share/{tab.thread_id}")
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        expect(page.locator("main")).to_contain_text("請用一句話描述燈塔。")
        expect(page.locator("header")).to_contain_text("分享的對話（唯讀）")
        expect(page.locator("input, textarea, form")).to_have_count(0)
        assert missing_glyphs(page.locator("body").inner_text()) == set()
        assert serious_violations(page) == []
        shot(page, "15-shared-page-for-anyone-zh-TW")
        phone.close()
    finally:
        server.stop()
