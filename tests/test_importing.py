"""An import is all or nothing, and a file that is damaged, made up or huge is refused in
plain words: `python -m chatllm import`, run as an operator runs it, on a real database,
and the chat's Import command on the running app, over its socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright

from chatllm.store import Database
from tests.conftest import sqlite_only
from tests.support import AppServer, SocketUser, command_env, refuse_inserts, run_command

CHROMIUM = os.environ.get("CHATLLM_CHROMIUM", "/usr/bin/chromium")

ROOT = Path(__file__).resolve().parent.parent


def document(messages: int, *, created_at: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    """A thread export of `messages` alternating messages, as the app writes one."""
    entries: list[dict[str, Any]] = []
    for n in range(messages):
        user = n % 2 == 0
        entries.append(
            {
                "id": f"m{n}",
                "role": "user" if user else "assistant",
                "text": f"message {n} about the lighthouse 燈塔",
                "created_at": created_at,
                **({} if user else {"kind": "reply", "reply_to": f"m{n - 1}"}),
                **({} if user else {"finish_reason": "stop"}),
            }
        )
    return {
        "format": "chatllm.thread",
        "version": 1,
        "thread": {"name": "Imported"},
        "messages": entries,
    }


@pytest.fixture
def where(tmp_path: Path, database_url: str) -> dict[str, str]:
    """The operator's settings: a data directory, and the database (SQLite there, or one
    on the test PostgreSQL server: each test runs on both)."""
    if database_url.startswith("sqlite"):
        return command_env(tmp_path)
    return command_env(tmp_path, CHATLLM_DATABASE_URL=database_url)


def counts(database_url: str) -> tuple[int, int, int, str]:
    """Threads, steps and search rows stored, and the database's own consistency check
    (SQLite's integrity check; on PostgreSQL, no step without its thread)."""

    async def read() -> tuple[int, int, int, str]:
        db = Database(database_url)
        try:
            threads, steps, indexed = [
                int(await db.value(f"SELECT count(*) FROM {table}"))
                for table in ("threads", "steps", "search")
            ]
            if db.dialect.name == "sqlite":
                integrity = str(await db.value("PRAGMA integrity_check"))
            else:
                orphans = await db.value(
                    "SELECT count(*) FROM steps s LEFT JOIN threads t ON t.id = s.thread_id"
                    " WHERE t.id IS NULL"
                )
                integrity = "ok" if orphans == 0 else f"{orphans} steps without a thread"
        finally:
            await db.close()
        return threads, steps, indexed, integrity

    return asyncio.run(read())


def test_an_import_killed_at_any_moment_leaves_all_of_it_or_nothing(
    tmp_path: Path, where: dict[str, str], database_url: str
) -> None:
    big = tmp_path / "big.json"
    size = 20_000
    big.write_text(json.dumps(document(size)), encoding="utf-8")
    assert run_command(where, "users", "list")[0] == 0  # the database made, migrated
    for delay in (0.5, 1.0, 1.5, 2.0, 3.0):
        process = subprocess.Popen(
            [sys.executable, "-m", "chatllm", "import", str(big)],
            cwd=ROOT,
            env=where,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)  # wherever the import has got to by then
        process.send_signal(signal.SIGKILL)
        process.wait()
        threads, steps, indexed, integrity = counts(database_url)
        assert integrity == "ok"
        assert steps == threads * size  # whole threads only
        assert indexed == threads * (size + 1)  # with their search rows (and the name's)
    code, said = run_command(where, "import", str(big))  # and one left to finish
    assert code == 0, said
    threads, steps, indexed, integrity = counts(database_url)
    assert threads >= 1 and steps == threads * size and integrity == "ok"


def test_a_write_refused_halfway_leaves_no_thread(
    tmp_path: Path, where: dict[str, str], database_url: str
) -> None:
    good = tmp_path / "good.json"
    content = document(40)
    content["messages"][31]["text"] = "poison"
    good.write_text(json.dumps(content), encoding="utf-8")
    assert run_command(where, "users", "list")[0] == 0

    async def fail_on_one_row() -> None:  # the disk fails on one row
        db = Database(database_url)
        await refuse_inserts(db, "steps", "NEW.output = 'poison'")
        await db.close()

    asyncio.run(fail_on_one_row())
    code, said = run_command(where, "import", str(good))
    assert code == 1
    assert "could not be imported (disk full)" in said and "nothing was kept" in said
    assert "INSERT" not in said and "Traceback" not in said
    assert counts(database_url) == (0, 0, 0, "ok")


@sqlite_only  # refused before any database is touched
@pytest.mark.parametrize(
    "created_at", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "1900-01-01"]
)
def test_a_made_up_time_is_refused_in_words(
    tmp_path: Path, where: dict[str, str], created_at: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document(2, created_at=created_at)), encoding="utf-8")
    code, said = run_command(where, "import", str(bad))
    assert code == 1 and "Traceback" not in said
    assert "messages[0].created_at" in said
    assert "plausible time" in said or "beyond the times" in said


@sqlite_only  # refused before any database is touched
def test_a_file_too_big_to_be_an_export_is_refused_unread(
    tmp_path: Path, where: dict[str, str]
) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as out:  # 60 MB, sparse: nothing to read if it is not read
        out.truncate(60 * 1024 * 1024)
    code, said = run_command(where, "import", str(huge))
    assert code == 1 and "is over 50 MB" in said
    code, said = run_command(where, "import", "-", stdin=b" " * (51 * 1024 * 1024))
    assert code == 1 and "is over 50 MB" in said


#: The first bytes of a PNG picture: the file a user picks by mistake, renamed `.json`.
PICTURE = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    server = AppServer(tmp_path_factory.mktemp("importing-app")).start()
    yield server
    server.stop()


async def import_in_chat(app: AppServer, name: str, content: bytes, language: str) -> SocketUser:
    """A new chat in `language` where the Import command is given and answered with an
    upload; returned once the app has answered it (an error, or the new thread's link)."""
    tab = SocketUser(app.base, language=language)
    await tab.connect()
    tab.answer_file_questions(name, content, "application/json")
    await tab.say("import this", command="Import")
    await tab.wait_for(lambda: tab.errors() or linked(tab))
    return tab


def linked(tab: SocketUser) -> list[dict[str, object]]:
    return [m for m in tab.named("new_message") if "/thread/" in str(m["output"])]


async def test_a_picture_named_json_is_refused_in_the_same_words_by_the_chat_and_the_command(
    app: AppServer, tmp_path: Path
) -> None:
    picture = tmp_path / "photo.json"
    picture.write_bytes(PICTURE)
    code, said = run_command(command_env(tmp_path / "data"), "import", str(picture))
    assert code == 1 and said.startswith(f"chatllm: {picture} is not UTF-8 text"), said
    for language, words in (
        ("en-US", said.removeprefix(f"chatllm: {picture}")),
        ("zh-TW", " 不是 UTF-8 文字檔"),
    ):
        tab = await import_in_chat(app, "photo.json", PICTURE, language)
        await tab.client.disconnect()
        (error,) = tab.errors()
        assert error.startswith("photo.json" + words), error
        assert not linked(tab)


def test_an_import_in_the_chat_is_listed_in_the_sidebar_at_once_marked_as_an_import(
    app: AppServer, tmp_path: Path
) -> None:
    """In Chromium, in zh-TW: the Import command's new thread appears in the sidebar
    without a reload, its name starting with what marks it an import (the sidebar shows a
    long name's start only)."""
    exported = tmp_path / "lighthouse.json"
    shown = document(2)
    shown["thread"]["name"] = "Lighthouse keepers' winter night shift planning notes"
    exported.write_text(json.dumps(shown), encoding="utf-8")
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: `make test` installs it (apt)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(locale="zh-TW", viewport={"width": 1280, "height": 860})
            page.goto(app.base)
            expect(page.locator("#chat-settings-open-modal")).to_be_visible(timeout=60_000)
            page.locator("#chat-input").fill("/")  # the command menu
            page.get_by_text("匯入", exact=True).click()
            page.locator("#chat-input").fill("匯入這個檔案")
            page.locator("#chat-input").press("Enter")
            # The chat's first message takes the page to its thread's address, which draws
            # the question's drop zone again: a file given before that was lost.
            page.wait_for_url("**/thread/*", timeout=30_000)
            expect(page.get_by_text("請上傳匯出的 JSON 對話檔")).to_be_visible(timeout=30_000)
            page.locator("#ask-button-input").set_input_files(str(exported))
            expect(page.get_by_text("已匯入為新對話")).to_be_visible(timeout=60_000)
            listed = page.locator("#thread-history").get_by_text("匯入：Lighthouse keepers")
            expect(listed).to_be_visible(timeout=10_000)
        finally:
            browser.close()
