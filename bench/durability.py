"""Durability and concurrency of the running app, as a person would find them.

1. Kill rounds: the app is started as `make run` starts it, a few chats send messages one
   after another, and after a random moment the app and its engine get SIGKILL — mid-reply,
   mid-write, wherever they are. A message counts as acknowledged once its reply began
   streaming (the app stores every message before the model runs). After each kill the
   database must hold every acknowledged message and pass SQLite's integrity check; the
   next round starts the app again on the same data, as a restart after a crash would.
2. Data-layer kill rounds: a process writes through the data layer alone (threads, user
   and assistant steps, a step's update, elements with their files, feedback) from several
   tasks at once, printing each write once its call has returned; after a random moment it
   gets SIGKILL. Every printed write must be in the database (an element's file on disk
   with its bytes), and the database must pass SQLite's integrity check.
3. Parallel chats: M chats send a message at the same moment to the local model (one
   generation at a time: the others wait in its line); every one must be answered.

    .venv/bin/python bench/durability.py [--rounds 10] [--chats 3] [--layer-rounds 30]
                                         [--parallel 8] [--json F]

Prints the figures (acknowledged vs found, integrity, answered, times) and exits non-zero
if a message or write was lost, the database is damaged, or a chat went unanswered.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import socketio

if TYPE_CHECKING:
    from chatllm.store import ChatDataLayer

ROOT = Path(__file__).resolve().parent.parent
CHAINLIT = str(Path(sys.executable).with_name("chainlit"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class App:
    """`chainlit run app.py` on a free loopback port, in a process group of its own (so
    that a kill takes its engine process too)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLLM_", "CHAINLIT_"))}
        with (data_dir / "app.log").open("ab") as log:
            command = [CHAINLIT, "run", "app.py", "--headless", "--host", "127.0.0.1"]
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)],
                cwd=ROOT,
                env={**env, "CHATLLM_DATA_DIR": str(data_dir)},
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        for _ in range(1200):  # up to 2 minutes: the engine loads and checks the model
            if self.process.poll() is not None:
                raise RuntimeError(f"the app ended at start; see {data_dir / 'app.log'}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError("the app did not start within 2 minutes")

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


async def connect_chat(
    client: socketio.AsyncClient,
    base: str,
    thread_id: str,
    cookies: Mapping[str, str | None],
    wait_timeout: float,
) -> None:
    """Open a chat on the app's socket as the page does: its cookies, Chainlit's auth
    (a new session, `thread_id`), then "connection_successful" (which starts the chat)."""
    await client.connect(
        base,
        socketio_path="/ws/socket.io",
        transports=["websocket"],
        headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())},
        auth={
            "clientType": "webapp",
            "sessionId": str(uuid.uuid4()),
            "threadId": thread_id,
            "userEnv": "{}",
        },
        wait_timeout=wait_timeout,
    )
    await client.emit("connection_successful")


@dataclass
class Chat:
    """One browser tab's conversation over socket.io, in local mode."""

    base: str
    thread_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    events: list[tuple[str, Any]] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)

    async def open(self, cookies: dict[str, str] | None = None) -> socketio.AsyncClient:
        """Connect (as the local user, unless `cookies` sign another in) and start a chat."""
        if cookies is None:
            async with httpx.AsyncClient(timeout=30) as http:
                cookies = dict((await http.post(self.base + "/auth/header")).cookies)
        client = socketio.AsyncClient(reconnection=False)

        async def record(event: str, data: Any = None) -> None:
            self.events.append((event, data))

        client.on("*", record)

        await connect_chat(client, self.base, self.thread_id, cookies, wait_timeout=30)
        await self.until(lambda: self.seen("chat_settings"), 60)
        await client.emit("chat_settings_change", {"max_tokens": 24, "temperature": 0.7})
        await self.until(lambda: self.seen("chat_settings") > 1, 60)
        return client

    def seen(self, name: str) -> int:
        return sum(1 for event, _ in self.events if event == name)

    async def until(self, condition: Any, seconds: float) -> bool:
        for _ in range(int(seconds / 0.02)):
            if condition():
                return True
            await asyncio.sleep(0.02)
        return False

    async def send(self, client: socketio.AsyncClient, text: str) -> bool:
        """Send `text`; True once its reply has finished (it is acknowledged as soon as
        the reply starts)."""
        message_id = str(uuid.uuid4())
        started, ended = self.seen("stream_start"), self.seen("task_end")
        await client.emit(
            "client_message",
            {
                "message": {
                    "id": message_id,
                    "threadId": self.thread_id,
                    "name": "User",
                    "type": "user_message",
                    "output": text,
                    "createdAt": "2026-01-01T00:00:00Z",
                },
                "fileReferences": [],
            },
        )

        def gone() -> bool:  # the app was killed
            return not client.connected

        if await self.until(lambda: self.seen("stream_start") > started or gone(), 120):
            if self.seen("stream_start") > started:
                self.acknowledged.append(message_id)
        return await self.until(lambda: self.seen("task_end") > ended or gone(), 120) and not gone()


async def chatting(chat: Chat, stop: asyncio.Event, number: int) -> None:
    try:
        client = await chat.open()
    except (socketio.exceptions.ConnectionError, httpx.HTTPError):
        return  # the kill came first
    n = 0
    while not stop.is_set() and client.connected:
        n += 1
        if not await chat.send(client, f"Chat {number}, message {n}: name a colour."):
            break
    await client.shutdown()


def stored_messages(data_dir: Path) -> tuple[set[str], str]:
    with sqlite3.connect(data_dir / "chatllm.db") as raw:
        ids = {row[0] for row in raw.execute("SELECT id FROM steps WHERE type = 'user_message'")}
        (integrity,) = raw.execute("PRAGMA integrity_check").fetchone()
    return ids, str(integrity)


async def kill_rounds(
    data_dir: Path, rounds: int, chats: int, rng: random.Random
) -> dict[str, Any]:
    acknowledged: set[str] = set()
    per_round = []
    integrity = "ok"
    for number in range(rounds):
        app = App(data_dir)
        stop = asyncio.Event()
        round_chats = [Chat(app.base) for _ in range(chats)]
        tasks = [asyncio.create_task(chatting(c, stop, i)) for i, c in enumerate(round_chats)]
        for _ in range(6000):  # up to 2 minutes for the chats to get going
            if any(c.acknowledged for c in round_chats):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(rng.uniform(1.0, 10.0))
        app.kill()  # wherever it is
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        sent = {m for c in round_chats for m in c.acknowledged}
        acknowledged |= sent
        found, integrity = stored_messages(data_dir)
        per_round.append(
            {"round": number + 1, "acknowledged": len(sent), "lost": len(sent - found)}
        )
        print(
            f"  round {number + 1:>2}: {len(sent):>3} acknowledged, "
            f"{len(sent - found)} lost, integrity {integrity}",
            flush=True,
        )
        if integrity != "ok":
            break
    found, integrity = stored_messages(data_dir)
    return {
        "rounds": len(per_round),
        "acknowledged": len(acknowledged),
        "found": len(acknowledged & found),
        "lost": len(acknowledged - found),
        "integrity": integrity,
        "per_round": per_round,
    }


WRITERS = 4  # tasks writing at once in the data-layer process


async def write_until_killed(data_dir: Path) -> None:
    """The data-layer process: each task writes a thread's worth of records, one call at a
    time, and prints `table id` once the call has returned (acknowledged)."""
    from chatllm.store import ChatDataLayer, FileStore, migrated

    async with migrated(f"sqlite+aiosqlite:///{data_dir / 'chatllm.db'}") as db:
        await write_through(ChatDataLayer(db, FileStore(data_dir / "files")))


async def write_through(layer: ChatDataLayer) -> None:
    from chainlit.element import Text
    from chainlit.types import Feedback
    from chainlit.user import User

    from chatllm.clock import utc_now

    user = await layer.create_user(User(identifier="writer"))
    assert user is not None

    def acknowledge(table: str, key: str) -> None:
        sys.stdout.write(f"{table} {key}\n")
        sys.stdout.flush()

    async def writer(number: int) -> None:
        for n in itertools.count():
            thread = str(uuid.uuid4())
            await layer.update_thread(thread, name=f"writer {number} thread {n}", user_id=user.id)
            acknowledge("threads", thread)
            asked, answered = str(uuid.uuid4()), str(uuid.uuid4())
            steps: list[tuple[str, Literal["user_message", "assistant_message"], str]] = [
                (asked, "user_message", f"question {n} 問題"),
                (answered, "assistant_message", ""),
            ]
            for step_id, kind, words in steps:
                await layer.create_step(
                    {
                        "id": step_id,
                        "threadId": thread,
                        "type": kind,
                        "name": kind,
                        "output": words,
                        "createdAt": utc_now(),
                    }
                )
                acknowledge("steps", step_id)
            await layer.update_step(
                {
                    "id": answered,
                    "threadId": thread,
                    "type": "assistant_message",
                    "name": "chatllm",
                    "output": f"answer {n} " + "字" * (n % 50),
                    "createdAt": utc_now(),
                }
            )
            acknowledge("answers", f"{answered} {n}")
            element = Text(content=f"element {thread}", for_id=answered, thread_id=thread)
            await layer.create_element(element)
            acknowledge("elements", f"{element.id} {thread}")
            feedback = await layer.upsert_feedback(Feedback(forId=answered, value=1))
            acknowledge("feedbacks", feedback)

    await asyncio.gather(*(writer(n) for n in range(WRITERS)))


def layer_writes_found(data_dir: Path, acknowledged: list[str]) -> tuple[int, str]:
    """How many of the acknowledged writes the database (and the file store) holds."""
    found = 0
    with sqlite3.connect(data_dir / "chatllm.db") as raw:
        for line in acknowledged:
            table, key, *rest = line.split()
            if table == "answers":
                row = raw.execute("SELECT output FROM steps WHERE id = ?", (key,)).fetchone()
                found += row is not None and str(row[0]).startswith(f"answer {rest[0]} ")
            elif table == "elements":
                row = raw.execute("SELECT object_key FROM elements WHERE id = ?", (key,)).fetchone()
                file = data_dir / "files" / str(row[0])[:2] / str(row[0]) if row else None
                found += bool(file and file.read_text("utf-8") == f"element {rest[0]}")
            else:
                found += (
                    raw.execute(f"SELECT 1 FROM {table} WHERE id = ?", (key,)).fetchone()
                    is not None
                )
        (integrity,) = raw.execute("PRAGMA integrity_check").fetchone()
    return found, str(integrity)


def layer_kill_rounds(data_dir: Path, rounds: int, rng: random.Random) -> dict[str, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)
    acknowledged: list[str] = []
    per_round = []
    integrity = "ok"
    for number in range(rounds):
        writer = subprocess.Popen(
            [sys.executable, __file__, "--writer", str(data_dir)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lines.extend, args=(writer.stdout,), daemon=True)
        reader.start()
        for _ in range(3000):  # up to a minute for the first write
            if lines or writer.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.2, 3.0))
        if writer.poll() is not None:
            raise RuntimeError(f"the writer ended by itself ({writer.returncode})")
        writer.kill()  # wherever it is
        writer.wait()
        reader.join(timeout=10)
        written = [line.strip() for line in lines if line.strip()]
        acknowledged += written
        found, integrity = layer_writes_found(data_dir, written)
        per_round.append(
            {"round": number + 1, "acknowledged": len(written), "lost": len(written) - found}
        )
        print(
            f"  round {number + 1:>2}: {len(written):>4} acknowledged, "
            f"{len(written) - found} lost, integrity {integrity}",
            flush=True,
        )
        if integrity != "ok" or not written:
            break
    found, integrity = layer_writes_found(data_dir, acknowledged)
    return {
        "rounds": len(per_round),
        "acknowledged": len(acknowledged),
        "found": found,
        "lost": len(acknowledged) - found,
        "integrity": integrity,
        "per_round": per_round,
    }


async def parallel_chats(data_dir: Path, count: int) -> dict[str, Any]:
    app = App(data_dir)
    try:
        chats = [Chat(app.base) for _ in range(count)]
        clients = await asyncio.gather(*(c.open() for c in chats))
        began = time.perf_counter()

        async def one(chat: Chat, client: socketio.AsyncClient, n: int) -> float | None:
            answered = await chat.send(client, f"Chat {n}: name a colour.")
            return time.perf_counter() - began if answered and chat.acknowledged else None

        times = await asyncio.gather(
            *(one(c, k, n) for n, (c, k) in enumerate(zip(chats, clients, strict=True)))
        )
        for client in clients:
            await client.shutdown()
    finally:
        app.kill()
    done = [t for t in times if t is not None]
    return {
        "chats": count,
        "answered": len(done),
        "seconds_median": round(statistics.median(done), 2) if done else None,
        "seconds_max": round(max(done), 2) if done else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="SIGKILL rounds (default 10)")
    parser.add_argument("--chats", type=int, default=3, help="chats during each round")
    parser.add_argument(
        "--layer-rounds", type=int, default=30, help="SIGKILL rounds of the data layer alone"
    )
    parser.add_argument("--writer", type=Path, help=argparse.SUPPRESS)  # the killed process
    parser.add_argument("--parallel", type=int, default=8, help="chats at once (default 8)")
    parser.add_argument("--seed", type=int, default=1, help="when in each round the kill comes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.writer:
        asyncio.run(write_until_killed(args.writer))
        return 0
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="chatllm-durability-") as tmp:
        print(f"Kill rounds: {args.rounds} × SIGKILL of the app and its engine, {args.chats} chats")
        killed = asyncio.run(kill_rounds(Path(tmp) / "kill", args.rounds, args.chats, rng))
        print(f"Data-layer kill rounds: {args.layer_rounds} × SIGKILL, {WRITERS} writers")
        layer = layer_kill_rounds(Path(tmp) / "layer", args.layer_rounds, rng)
        print(f"Parallel: {args.parallel} chats at once on the local model")
        parallel = asyncio.run(parallel_chats(Path(tmp) / "parallel", args.parallel))
    ok = killed["lost"] == 0 and killed["integrity"] == "ok"
    ok = ok and layer["lost"] == 0 and layer["integrity"] == "ok" and layer["acknowledged"] > 0
    ok = ok and parallel["answered"] == parallel["chats"]
    print(
        f"\nacknowledged {killed['acknowledged']}, found {killed['found']}, "
        f"lost {killed['lost']}, integrity {killed['integrity']} "
        f"({killed['rounds']} rounds)\n"
        f"data layer: acknowledged {layer['acknowledged']}, found {layer['found']}, "
        f"lost {layer['lost']}, integrity {layer['integrity']} ({layer['rounds']} rounds)\n"
        f"parallel: {parallel['answered']} of {parallel['chats']} answered, "
        f"median {parallel['seconds_median']} s, slowest {parallel['seconds_max']} s\n"
        f"{'PASS' if ok else 'FAIL'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"kill": killed, "layer": layer, "parallel": parallel, "pass": ok}, indent=2
            ),
            "utf-8",
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
