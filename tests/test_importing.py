"""An import is all or nothing, and a file that is damaged, made up or huge is refused in
plain words: `python -m chatllm import`, run as an operator runs it, on a real database."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

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


def chatllm(data_dir: Path, *argv: str, stdin: bytes | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLLM_")}
    done = subprocess.run(
        [sys.executable, "-m", "chatllm", *argv],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env={**env, "CHATLLM_DATA_DIR": str(data_dir)},
        timeout=300,
    )
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace").strip()


def counts(data_dir: Path) -> tuple[int, int, str]:
    """Threads and steps stored, and SQLite's integrity check."""
    with sqlite3.connect(data_dir / "chatllm.db") as raw:
        (threads,) = raw.execute("SELECT count(*) FROM threads").fetchone()
        (steps,) = raw.execute("SELECT count(*) FROM steps").fetchone()
        (integrity,) = raw.execute("PRAGMA integrity_check").fetchone()
    return threads, steps, integrity


def test_an_import_killed_at_any_moment_leaves_all_of_it_or_nothing(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    size = 20_000
    big.write_text(json.dumps(document(size)), encoding="utf-8")
    assert chatllm(tmp_path, "users", "list")[0] == 0  # the database made, migrated
    for delay in (0.5, 1.0, 1.5, 2.0, 3.0):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLLM_")}
        process = subprocess.Popen(
            [sys.executable, "-m", "chatllm", "import", str(big)],
            cwd=ROOT,
            env={**env, "CHATLLM_DATA_DIR": str(tmp_path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)  # wherever the import has got to by then
        process.send_signal(signal.SIGKILL)
        process.wait()
        threads, steps, integrity = counts(tmp_path)
        assert integrity == "ok"
        assert steps == threads * size  # whole threads only
    code, said = chatllm(tmp_path, "import", str(big))  # and one left to finish
    assert code == 0, said
    threads, steps, integrity = counts(tmp_path)
    assert steps == threads * size and integrity == "ok"


def test_a_write_refused_halfway_leaves_no_thread(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    content = document(40)
    content["messages"][31]["text"] = "poison"
    good.write_text(json.dumps(content), encoding="utf-8")
    assert chatllm(tmp_path, "users", "list")[0] == 0
    with sqlite3.connect(tmp_path / "chatllm.db") as raw:  # the disk fails on one row
        raw.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON steps WHEN NEW.output = 'poison'"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    code, said = chatllm(tmp_path, "import", str(good))
    assert code == 1
    assert "could not be imported (disk full)" in said and "nothing was kept" in said
    assert "INSERT" not in said and "Traceback" not in said
    assert counts(tmp_path) == (0, 0, "ok")
    with sqlite3.connect(tmp_path / "chatllm.db") as raw:
        assert raw.execute("SELECT count(*) FROM search").fetchone() == (0,)


@pytest.mark.parametrize(
    "created_at", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "1900-01-01"]
)
def test_a_made_up_time_is_refused_in_words(tmp_path: Path, created_at: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document(2, created_at=created_at)), encoding="utf-8")
    code, said = chatllm(tmp_path, "import", str(bad))
    assert code == 1 and "Traceback" not in said
    assert "messages[0].created_at" in said
    assert "plausible time" in said or "beyond the times" in said


def test_a_file_too_big_to_be_an_export_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as out:  # 60 MB, sparse: nothing to read if it is not read
        out.truncate(60 * 1024 * 1024)
    code, said = chatllm(tmp_path, "import", str(huge))
    assert code == 1 and "is over 50 MB" in said
    code, said = chatllm(tmp_path, "import", "-", stdin=b" " * (51 * 1024 * 1024))
    assert code == 1 and "is over 50 MB" in said
