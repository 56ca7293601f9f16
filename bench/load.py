"""Load: many people chatting at once through the running app — what the app itself adds.

Simulated users speak Chainlit's socket protocol as the page does (python-socketio with the
page's cookies: nginx's affinity cookie from `GET /`, the local user's login from
`POST /auth/header`), each in a thread of their own, sending `--messages` messages one
after another: the next as soon as the turn ends (`task_end`, when the page unlocks). Users
start one after another, evenly over `--ramp` seconds (by default one reply's length), as
people arriving do and as load tools ramp up; `--ramp 0` starts them all at the same
moment, a burst: with every reply the same length they then stay in step, each turn a burst
of all users' messages at once, for several turns.

The model is a scripted OpenAI-compatible endpoint on loopback, in a process of its own:
every reply is `--tokens` tokens, the first at once, then one each `--interval-ms`, and each
token's text names its index and the moment the endpoint sent it (the first also when the
request arrived): `⟨7@1733100000.123456⟩ `. The app passes the text through unchanged, so
for each token the client knows how long the app took to pass it on:

- added TTFT: send → first token on the page, minus the endpoint's own time to first token
  (first token sent − request received);
  also for each user's first turn (a new thread; on a fresh worker, new database
  connections) apart from the later ones;
- per-token added latency: token on the page − token sent by the endpoint (every token,
  the first included; Chainlit sends the first in `stream_start`, the others in
  `stream_token`, one event each);
- page locked: last token on the page → `task_end` (the reply stored, the input usable);
- errors: error messages, turns that timed out, missing tokens, a lost connection, and
  ERROR lines in the workers' logs;
- stored once: afterwards, every thread holds each user message once (its id, its text)
  and one reply (metadata.kind "reply") per message with every token, and nothing else;
- written once: the bench adds a write log to the app's database once the workers have
  made it (a table, and triggers on `steps` and `threads` that note every row inserted or
  updated, an upsert's update included; `--no-write-log` leaves them out): how many times
  each user message and each reply was written, and the writes of Chainlit's own `run`
  steps (on_chat_start, on_message) and of the thread, per turn;
- on PostgreSQL also its own counts (pg_stat_user_tables, read once the workers have
  stopped): tuple writes of `steps`, `search`, `threads` and `elements` per stored
  message (a user message or a reply; the warm-up turns included);
- where the time goes: the write log's times beside the client's and the endpoint's — after
  sending, each write of the user message, the request reaching the endpoint, the first
  and last token; after the last token, each write of the reply and task_end;
- CPU: seconds each process used during the measured part, as % of one core, and what the
  rest of the machine used meanwhile ("others").

Set-ups (`--setup`, comma-separated):
  sqlite1  one worker (`chainlit run app.py`), SQLite in its data directory;
  pg2      PostgreSQL (durable settings, as `make cluster`'s), two workers sharing it and a
           data directory, nginx in front (deploy/nginx.conf), every client through nginx.
Each user count gets fresh workers and a fresh database; each worker answers one warm-up
turn first (not measured, but its writes are counted in the per-message figures).

Targets: added TTFT p95 <= 100 ms, per-token added latency p95 <= 10 ms, 0 errors, every
message and reply stored once and written once.

    .venv/bin/python bench/load.py [--setup sqlite1,pg2] [--users 5,10,25,50]
        [--messages 6] [--ramp S] [--tokens 40] [--interval-ms 20] [--json F]

Everything runs on 127.0.0.1; the client, the endpoint, the workers and PostgreSQL share
the machine, so a busy machine shows in the figures (the others' CPU and the client's own
event-loop lag are printed beside them). Exits non-zero if a user got an error or a
message was not stored once; the latency targets are reported (PASS/MISS), not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import socketio
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # deploy/
sys.path.insert(0, str(Path(__file__).resolve().parent))
from durability import connect_chat

from deploy.cluster import Nginx, Worker, stop_process, wait_until_serving
from deploy.postgres import PostgresServer, free_port

MODEL = "scripted"
API_KEY = "bench-load-key"
#: A token's stamp: its index, when the endpoint sent it, and (the first) when the request
#: reached the endpoint.
STAMP = re.compile(r"⟨(\d+)@(\d+\.\d+)(?:@(\d+\.\d+))?⟩")
TARGET_TTFT_MS = 100.0
TARGET_TOKEN_MS = 10.0
SETUPS = ("sqlite1", "pg2")
#: The timeline's points, with their column titles.
TIMELINE = {
    "message write 1": "msg write 1",
    "message write 2": "msg write 2",
    "endpoint asked": "endpoint",
    "first token": "1st token",
    "last token": "last token",
    "reply write 1": "reply w 1",
    "reply write 2": "reply w 2",
    "task_end": "task_end",
}


# ---- the scripted endpoint (its own process: `load.py --serve-endpoint PORT`)


def serve_endpoint(port: int, tokens: int, interval_ms: float) -> None:
    """An OpenAI-compatible server on 127.0.0.1:`port` whose every reply is `tokens`
    stamped tokens, the first at once, then one each `interval_ms`."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    interval = interval_ms / 1000

    async def models(_: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
        )

    async def completions(request: Request) -> Response:
        received = time.time()
        began = time.monotonic()
        body = await request.json()
        name = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": name, "created": int(received), "model": body.get("model", MODEL)}
        usage = {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}

        def text(index: int) -> str:
            extra = f"@{received:.6f}" if index == 0 else ""
            return f"⟨{index}@{time.time():.6f}{extra}⟩ "

        if not body.get("stream"):
            words = "".join(text(i) for i in range(tokens))
            message = {"role": "assistant", "content": words}
            return JSONResponse(
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None, **more: Any) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            data = {**head, "object": "chat.completion.chunk", "choices": [choice], **more}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def stream() -> Any:
            for index in range(tokens):
                wait = began + index * interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                delta = {"content": text(index), **({"role": "assistant"} if index == 0 else {})}
                yield chunk(delta, None)
            yield chunk({}, "stop")
            if with_usage:
                data = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", completions, methods=["POST"]),
        ]
    )
    uvicorn.run(
        app, host="127.0.0.1", port=port, loop="uvloop", log_level="warning", access_log=False
    )


@dataclass
class Endpoint:
    tokens: int
    interval_ms: float
    log: Path
    port: int = field(default_factory=free_port)
    process: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Endpoint:
        self.process = subprocess.Popen(
            [
                *(sys.executable, __file__, "--serve-endpoint", str(self.port)),
                *("--tokens", str(self.tokens), "--interval-ms", str(self.interval_ms)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        request = urllib.request.Request(self.base_url + "/models")
        wait_until_serving(self.process, request, "the scripted endpoint", self.log, 60)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


# ---- CPU time of the processes involved (Linux /proc)


def _cpu(pid: int, waited: bool = False) -> float:
    """User + system seconds of `pid` (and of its children it has waited for)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if waited:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far: each group's processes and their descendants; "client" is this
    process."""
    seconds = {}
    for name, pids in groups.items():
        total = 0.0
        pending = list(pids)
        while pending:
            pid = pending.pop()
            total += _cpu(pid, waited=True)
            pending += _children(pid)
        seconds[name] = total
    usage = resource.getrusage(resource.RUSAGE_SELF)
    seconds["client"] = usage.ru_utime + usage.ru_stime
    # The whole machine: every core's busy time (user, nice, system, irq, softirq, steal).
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    seconds["machine"] = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return seconds


# ---- the simulated users


@dataclass
class Turn:
    """One message and its reply, as one user saw them (times: time.time(), seconds)."""

    message_id: str
    text: str
    sent: float
    first: float | None = None  # the first token on the page
    endpoint_ttft: float | None = None  # the endpoint: first token sent - request received
    asked: float | None = None  # when the request reached the endpoint
    reply_id: str | None = None
    delays: list[float] = field(default_factory=list)  # each token: on the page - sent
    indices: set[int] = field(default_factory=set)
    last: float | None = None
    ended: float | None = None  # task_end
    errors: list[str] = field(default_factory=list)


class User:
    """One browser tab: its own cookies, socket and thread."""

    def __init__(self, base: str, number: int, turn_timeout: float) -> None:
        self.base = base
        self.number = number
        self.turn_timeout = turn_timeout
        self.thread_id = str(uuid.uuid4())
        self.turns: list[Turn] = []
        self.errors: list[str] = []
        self.settings_seen = asyncio.Event()
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.current: Turn | None = None
        self.client = socketio.AsyncClient(reconnection=False)
        self.client.on("*", self._event)
        self.client.on("disconnect", self._disconnected)

    async def _disconnected(self, *_: Any) -> None:
        if self.current is not None:
            self.current.errors.append("disconnected")
            self.ended.set()

    async def _event(self, event: str, data: Any = None) -> None:
        now = time.time()
        if event == "chat_settings":
            self.settings_seen.set()
        turn = self.current
        if turn is None:
            if event == "task_end" and self.settings_seen.is_set():
                self.started.set()  # on_chat_start's task has ended: the page unlocks
            return
        if not isinstance(data, dict):
            return
        if event == "stream_start" and data.get("type") == "assistant_message":
            turn.reply_id = str(data.get("id"))
            self._tokens(turn, str(data.get("output") or ""), now)
        elif event == "stream_token":
            self._tokens(turn, str(data.get("token") or ""), now)
        elif event in ("new_message", "update_message") and data.get("isError"):
            turn.errors.append(f"error message: {str(data.get('output'))[:200]}")
        elif event == "task_end":
            turn.ended = now
            self.ended.set()

    def _tokens(self, turn: Turn, text: str, now: float) -> None:
        for index, sent, received in STAMP.findall(text):
            if int(index) in turn.indices:
                continue  # shown again (a whole-text update): seen when it first came
            if turn.first is None:
                turn.first = now
            if received:
                turn.endpoint_ttft = float(sent) - float(received)
                turn.asked = float(received)
            turn.delays.append(now - float(sent))
            turn.indices.add(int(index))
            turn.last = now

    async def connect(self) -> None:
        async with httpx.AsyncClient(base_url=self.base, timeout=60) as http:
            (await http.get("/")).raise_for_status()  # nginx's affinity cookie, as a page
            (await http.post("/auth/header")).raise_for_status()  # the local user's login
            cookies = {cookie.name: cookie.value for cookie in http.cookies.jar}
        await connect_chat(self.client, self.base, self.thread_id, cookies, wait_timeout=60)
        await asyncio.wait_for(self.started.wait(), 60)  # the chat has started

    async def say(self, text: str) -> Turn:
        turn = Turn(message_id=str(uuid.uuid4()), text=text, sent=time.time())
        self.turns.append(turn)
        self.ended.clear()
        self.current = turn
        message = {
            "id": turn.message_id,
            "threadId": self.thread_id,
            "name": "User",
            "type": "user_message",
            "output": text,
            "createdAt": "2026-01-01T00:00:00Z",
        }
        await self.client.emit("client_message", {"message": message, "fileReferences": []})
        try:
            await asyncio.wait_for(self.ended.wait(), self.turn_timeout)
        except TimeoutError:
            turn.errors.append(f"no task_end within {self.turn_timeout:.0f} s")
        self.current = None
        return turn

    async def chat(self, messages: int, start: asyncio.Event, delay: float) -> None:
        await start.wait()
        await asyncio.sleep(delay)
        for n in range(messages):
            turn = await self.say(f"User {self.number}, message {n + 1}: name a colour.")
            if not self.client.connected or any("task_end" in e for e in turn.errors):
                break


async def loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    """How late this (the client's) event loop wakes from 10 ms sleeps."""
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - began - 0.01)


async def warm_up(bases: Sequence[str], turn_timeout: float) -> int:
    """One turn on each worker (directly): imports and first connections done."""
    for base in bases:
        user = User(base, -1, turn_timeout)
        await user.connect()
        await user.say("Warm-up: name a colour.")
        await user.client.disconnect()
    return len(bases)


async def simulate(
    base: str,
    users: int,
    messages: int,
    turn_timeout: float,
    cpu_groups: dict[str, list[int]],
    ramp: float,
) -> dict[str, Any]:
    people = [User(base, n, turn_timeout) for n in range(users)]
    connected = await asyncio.gather(*(p.connect() for p in people), return_exceptions=True)
    for person, outcome in zip(people, connected, strict=True):
        if isinstance(outcome, BaseException):
            person.errors.append(f"could not connect: {outcome!r}")
    stop, lags = asyncio.Event(), list[float]()
    lagging = asyncio.create_task(loop_lag(stop, lags))
    start = asyncio.Event()
    ready = [p for p in people if not p.errors]
    chats = [
        asyncio.create_task(p.chat(messages, start, ramp * n / len(ready)))
        for n, p in enumerate(ready)
    ]
    cpu_before = cpu_snapshot(cpu_groups)
    began = time.perf_counter()
    start.set()
    _, pending = await asyncio.wait(chats, timeout=ramp + messages * turn_timeout + 60)
    wall = time.perf_counter() - began
    cpu_after = cpu_snapshot(cpu_groups)
    for task in pending:
        task.cancel()
    for person, task in zip(ready, chats, strict=True):
        if task in pending:
            person.errors.append("did not finish")
        elif task.exception() is not None:
            person.errors.append(f"failed: {task.exception()!r}")
    stop.set()
    await lagging
    for person in people:
        if person.client.connected:
            await person.client.disconnect()
    return {
        "people": people,
        "wall": wall,
        "cpu": {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
        "lags": lags,
    }


# ---- what was stored


async def stored(url: str, people: Sequence[User], tokens: int) -> dict[str, Any]:
    """Check each user's thread in the database: its messages and replies, each once."""
    from chatllm.store import Database

    db = Database(url)
    try:
        rows = await db.rows("SELECT id, thread_id, type, output, metadata FROM steps")
        tables = await db.rows(
            "SELECT name FROM sqlite_master WHERE name = 'bench_writes'"
            if db.dialect.name == "sqlite"
            else "SELECT tablename AS name FROM pg_tables WHERE tablename = 'bench_writes'"
        )
        logged = (
            await db.rows("SELECT tbl, row_id, thread_id, type, op, at FROM bench_writes")
            if tables
            else None
        )
        stats: dict[str, dict[str, int]] = {}
        if db.dialect.name == "postgresql":
            for row in await db.rows(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
            ):
                stats[str(row.relname)] = {
                    "ins": int(row.n_tup_ins),
                    "upd": int(row.n_tup_upd),
                    "del": int(row.n_tup_del),
                }
    finally:
        await db.close()
    by_thread: dict[str, list[Any]] = {}
    for row in rows:
        by_thread.setdefault(str(row.thread_id), []).append(row)
    problems: list[str] = []
    runs = 0  # Chainlit's own steps for its hooks (on_chat_start, on_message), stored too
    for person in people:
        steps = by_thread.get(person.thread_id, [])
        asked = person.turns
        for turn in asked:
            found = [s for s in steps if s.id == turn.message_id]
            if len(found) != 1 or found[0].type != "user_message" or found[0].output != turn.text:
                problems.append(f"user {person.number}: message {turn.message_id} not stored once")
        replies = [s for s in steps if _kind(s.metadata) == "reply"]
        complete = [
            r
            for r in replies
            if {int(i) for i, _, _ in STAMP.findall(r.output or "")} == set(range(tokens))
        ]
        if len(replies) != len(asked) or len(complete) != len(replies):
            problems.append(
                f"user {person.number}: {len(replies)} replies stored for {len(asked)} messages"
                f" ({len(complete)} complete)"
            )
        runs += sum(s.type == "run" for s in steps)
        others = [
            f"{s.type} {str(s.output)[:80]!r}"
            for s in steps
            if s.type not in ("run", "user_message") and _kind(s.metadata) != "reply"
        ]
        if others:
            problems.append(f"user {person.number}: other steps in the thread: {others[:3]}")
    return {
        "rows": len(rows),
        "run_steps": runs,
        "problems": problems,
        "tuple_writes": stats,
        "writes": None if logged is None else count_writes(logged, people),
    }


def count_writes(logged: Sequence[Any], people: Sequence[User]) -> dict[str, Any]:
    """From the write log: how often each user message and reply was written, and the
    writes of Chainlit's run steps and of the threads, per turn (the users' threads only)."""
    threads = {p.thread_id for p in people}
    asked = {t.message_id for p in people for t in p.turns}
    turns = max(1, len(asked))
    per_row: dict[str, int] = {}
    kinds: dict[str, str] = {}
    times: dict[str, list[float]] = {}
    for row in logged:
        if row.thread_id in threads:
            key = f"{row.tbl}:{row.row_id}"
            per_row[key] = per_row.get(key, 0) + 1
            kinds[key] = "thread" if row.tbl == "threads" else str(row.type)
            times.setdefault(str(row.row_id), []).append(float(row.at))
    messages = [n for key, n in per_row.items() if key.removeprefix("steps:") in asked]
    replies = [n for key, n in per_row.items() if kinds[key] == "assistant_message"]
    runs = sum(n for key, n in per_row.items() if kinds[key] == "run")
    thread_writes = sum(n for key, n in per_row.items() if kinds[key] == "thread")
    return {
        "user_message": {"mean": _mean(messages), "max": max(messages, default=0)},
        "reply": {"mean": _mean(replies), "max": max(replies, default=0)},
        "run_steps_per_turn": round(runs / turns, 2),
        "threads_per_turn": round(thread_writes / turns, 2),
        "rows_per_turn": round(sum(per_row.values()) / turns, 2),
        "written_once": bool(messages and replies) and max(messages) == 1 and max(replies) == 1,
        "timeline_ms": timeline([t for p in people for t in p.turns], times),
    }


def timeline(turns: Sequence[Turn], times: dict[str, list[float]]) -> dict[str, Any]:
    """Where a turn's time goes: when each write of the user message happened, the request
    reached the endpoint and the first token the page, after sending (median/p95 ms); and
    when each write of the reply happened and task_end came, after the last token."""
    points: dict[str, list[float]] = {}

    def add(name: str, value: float | None, since: float | None) -> None:
        if value is not None and since is not None:
            points.setdefault(name, []).append(value - since)

    for turn in turns:
        for n, at in enumerate(sorted(times.get(turn.message_id, []))[:3]):
            add(f"message write {n + 1}", at, turn.sent)
        add("endpoint asked", turn.asked, turn.sent)
        add("first token", turn.first, turn.sent)
        add("last token", turn.last, turn.sent)
        for n, at in enumerate(sorted(times.get(turn.reply_id or "", []))[:3]):
            add(f"reply write {n + 1}", at, turn.last)
        add("task_end", turn.ended, turn.last)
    return {name: {"median": _median(v), "p95": _pct(v, 0.95)} for name, v in points.items()}


def _mean(values: Sequence[int]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def _kind(metadata: Any) -> str | None:
    try:
        value = json.loads(metadata) if isinstance(metadata, str) else metadata
    except ValueError:
        return None
    return value.get("kind") if isinstance(value, dict) else None


def log_errors(paths: Sequence[Path]) -> list[str]:
    lines = []
    for path in paths:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if " ERROR " in line or line.startswith(("ERROR", "Traceback")):
                    lines.append(f"{path.name}: {line[:300]}")
    return lines


# ---- one run: a set-up, a number of users


def _pct(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of `values`, in ms."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered), math.ceil(q * len(ordered))) - 1)
    return round(ordered[rank] * 1000, 1)


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values) * 1000, 1) if values else None


@contextmanager
def running(
    setup: str, root: Path, endpoint: Endpoint, pg: PostgresServer | None, write_log: bool
) -> Iterator[tuple[str, list[Worker], str, dict[str, list[int]]]]:
    """The app as `setup` runs it: (the address users reach, the workers, the database
    URL, the processes whose CPU time counts)."""
    data_dir = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLLM_", "CHAINLIT_"))}
    env |= {
        "CHATLLM_LOCAL_BACKEND": "false",
        "CHATLLM_OPENAI_BASE_URL": endpoint.base_url,
        "CHATLLM_OPENAI_API_KEY": API_KEY,
        "CHATLLM_OPENAI_MODELS": MODEL,
    }
    if pg is not None:
        url = pg.new_database()
        env["CHATLLM_DATABASE_URL"] = url
    else:
        url = f"sqlite+aiosqlite:///{data_dir / 'chatllm.db'}"
    count = 2 if setup == "pg2" else 1
    workers: list[Worker] = []
    nginx: Nginx | None = None
    try:
        for _ in range(count):
            workers.append(Worker(data_dir, env).start())
        if write_log:
            log_writes(url, pg)
        groups = {f"worker{n + 1}": [w.process.pid] for n, w in enumerate(workers) if w.process}
        groups["endpoint"] = [endpoint.process.pid] if endpoint.process else []
        base = workers[0].base
        if setup == "pg2":
            nginx = Nginx(root / "nginx", [w.port for w in workers]).start()
            base = nginx.base
            if nginx.process is not None:
                groups["nginx"] = [nginx.process.pid]
            if pg is not None and pg.process is not None:
                groups["postgres"] = [pg.process.pid]
        yield base, workers, url, groups
    finally:
        if nginx is not None:
            nginx.stop()
        for worker in workers:
            worker.stop()


#: The write log: a row for each row written to `steps` and `threads` (inserted, or updated
#: by an upsert), by triggers the bench adds once the workers have made the schema.
WRITE_LOG_SQLITE = [
    "CREATE TABLE bench_writes"
    " (tbl TEXT, row_id TEXT, thread_id TEXT, type TEXT, op TEXT, at REAL)",
    *(
        f"CREATE TRIGGER bench_{table}_{op} AFTER {op.upper()} ON {table} BEGIN"
        f" INSERT INTO bench_writes VALUES ('{table}', NEW.id, NEW.{thread}, {kind}, '{op}',"
        " (julianday('now') - 2440587.5) * 86400.0); END"
        for table, thread, kind in (("steps", "thread_id", "NEW.type"), ("threads", "id", "NULL"))
        for op in ("insert", "update")
    ),
]
WRITE_LOG_POSTGRESQL = [
    "CREATE TABLE bench_writes"
    " (tbl TEXT, row_id TEXT, thread_id TEXT, type TEXT, op TEXT, at DOUBLE PRECISION)",
    "CREATE FUNCTION bench_log() RETURNS trigger LANGUAGE plpgsql AS $$"
    " DECLARE r jsonb := to_jsonb(NEW); BEGIN"
    " INSERT INTO bench_writes VALUES (TG_TABLE_NAME, r->>'id',"
    " CASE TG_TABLE_NAME WHEN 'steps' THEN r->>'thread_id' ELSE r->>'id' END,"
    " r->>'type', lower(TG_OP), extract(epoch FROM clock_timestamp())); RETURN NULL; END $$",
    *(
        f"CREATE TRIGGER bench_{table} AFTER INSERT OR UPDATE ON {table}"
        " FOR EACH ROW EXECUTE FUNCTION bench_log()"
        for table in ("steps", "threads")
    ),
]


def log_writes(url: str, pg: PostgresServer | None) -> None:
    """Add the write log's table and triggers to the app's database."""
    if pg is not None:
        pg.psql("; ".join(WRITE_LOG_POSTGRESQL), database=url.rsplit("/", 1)[1])
        return
    with sqlite3.connect(url.split(":///", 1)[1], timeout=30) as raw:
        for statement in WRITE_LOG_SQLITE:
            raw.execute(statement)


def wait_for_backends(pg: PostgresServer, url: str) -> None:
    """Until the workers' database sessions have ended (their statistics written)."""
    name = url.rsplit("/", 1)[1]
    for _ in range(100):  # up to 10 s
        left = pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'")
        if left.strip() == "0":
            return
        time.sleep(0.1)


def measure(
    setup: str,
    users: int,
    args: argparse.Namespace,
    endpoint: Endpoint,
    pg: PostgresServer | None,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"chatllm-load-{setup}-{users}-"))
    root.chmod(0o755)  # nginx's workers run unprivileged
    try:
        with running(setup, root, endpoint, pg, args.write_log) as (base, workers, url, groups):
            warm = asyncio.run(warm_up([w.base for w in workers], args.turn_timeout))
            # uvloop, as the workers and the scripted endpoint run: the users' side of the
            # machine the workers share costs less of it.
            result = uvloop.run(
                simulate(base, users, args.messages, args.turn_timeout, groups, _ramp(args))
            )
            time.sleep(1.0)  # writes Chainlit left running as tasks
            logs = [w.log for w in workers]
        # The workers have stopped: every write is done, PostgreSQL's counts are flushed.
        if pg is not None:
            wait_for_backends(pg, url)
        people: list[User] = result["people"]
        check = asyncio.run(stored(url, people, args.tokens))
        errors_in_logs = log_errors(logs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return summarize(setup, users, args, people, result, check, errors_in_logs, warm)


def _ramp(args: argparse.Namespace) -> float:
    """Seconds over which the users start: `--ramp`, or one reply's length."""
    return float(args.ramp) if args.ramp is not None else args.tokens * args.interval_ms / 1000


def _added_ttft(turn: Turn) -> float | None:
    """Send → first token on the page, minus the endpoint's own time to first token."""
    if turn.first is None or turn.endpoint_ttft is None:
        return None
    return turn.first - turn.sent - turn.endpoint_ttft


def _first_and_later(people: Sequence[User]) -> dict[str, list[float]]:
    """The added time to first token of each user's first turn, and of the others'."""
    parts: dict[str, list[float]] = {"first_turns": [], "later_turns": []}
    for person in people:
        for number, turn in enumerate(person.turns):
            if (added := _added_ttft(turn)) is not None:
                parts["first_turns" if number == 0 else "later_turns"].append(added)
    return parts


def summarize(
    setup: str,
    users: int,
    args: argparse.Namespace,
    people: Sequence[User],
    result: dict[str, Any],
    check: dict[str, Any],
    errors_in_logs: list[str],
    warm_turns: int,
) -> dict[str, Any]:
    turns = [t for p in people for t in p.turns]
    added, delays, locked, totals = [], [], [], []
    errors = [e for p in people for e in p.errors]
    for turn in turns:
        errors += turn.errors
        if turn.indices != set(range(args.tokens)) and not turn.errors:
            errors.append(f"{len(turn.indices)} of {args.tokens} tokens arrived")
        if (one := _added_ttft(turn)) is not None:
            added.append(one)
        delays += turn.delays
        if turn.ended is not None and turn.last is not None:
            locked.append(turn.ended - turn.last)
        if turn.ended is not None:
            totals.append(turn.ended - turn.sent)
    errors += errors_in_logs
    stored_once = not check["problems"] and len(turns) == users * args.messages
    stats = check["tuple_writes"]
    messages_stored = 2 * (len(turns) + warm_turns)
    writes: dict[str, float] | None = None
    if stats:
        writes = {
            table: round(sum(stats[table].values()) / messages_stored, 2)
            for table in ("steps", "search", "threads", "elements")
            if table in stats
        }
    wall = result["wall"]
    cpu = {k: round(100 * v / wall, 1) for k, v in result["cpu"].items()} if wall else {}
    if "machine" in cpu:  # what else ran meanwhile (the machine may be shared)
        ours = sum(v for k, v in cpu.items() if k != "machine")
        cpu["others"] = round(max(0.0, cpu.pop("machine") - ours), 1)
    figures = {
        "setup": setup,
        "users": users,
        "messages": args.messages,
        "tokens": args.tokens,
        "interval_ms": args.interval_ms,
        "ramp_s": _ramp(args),
        "turns": len(turns),
        "seconds": round(wall, 2),
        "added_ttft_ms": {"median": _median(added), "p95": _pct(added, 0.95)},
        # A user's first turn (a new thread, and on a fresh worker new database
        # connections) apart from the rest: the p95 of a short run can be the first turns'.
        **{
            f"added_ttft_{which}_ms": {"median": _median(part), "p95": _pct(part, 0.95)}
            for which, part in _first_and_later(people).items()
        },
        "endpoint_ttft_ms": {
            "median": _median([t.endpoint_ttft for t in turns if t.endpoint_ttft is not None])
        },
        "token_added_ms": {
            "median": _median(delays),
            "p95": _pct(delays, 0.95),
            "max": _pct(delays, 1.0),
        },
        "locked_ms": {"median": _median(locked), "p95": _pct(locked, 0.95)},
        "turn_s": {
            "median": round(statistics.median(totals), 2) if totals else None,
            "p95": round((_pct(totals, 0.95) or 0) / 1000, 2) if totals else None,
        },
        "errors": len(errors),
        "error_examples": errors[:10],
        "stored_once": stored_once,
        "store_problems": check["problems"][:10],
        "rows": check["rows"],
        "run_steps": check["run_steps"],
        "writes": check["writes"],
        "tuple_writes": stats,
        "tuple_writes_per_message": writes,
        "warm_up_turns": warm_turns,
        "cpu_pct": cpu,
        "client_lag_ms": {"median": _median(result["lags"]), "p95": _pct(result["lags"], 0.95)},
    }
    verdicts = {
        "ttft": (_pct(added, 0.95) or 1e9) <= TARGET_TTFT_MS,
        "token": (_pct(delays, 0.95) or 1e9) <= TARGET_TOKEN_MS,
        "errors": not errors,
        "stored_once": stored_once,
        **({"written_once": check["writes"]["written_once"]} if check["writes"] else {}),
    }
    figures["pass"] = verdicts
    return figures


# ---- the table


def _pair(figure: dict[str, Any], a: str = "median", b: str = "p95") -> str:
    def one(value: Any) -> str:
        return "-" if value is None else f"{value:g}"

    return f"{one(figure.get(a))}/{one(figure.get(b))}"


def print_table(runs: Sequence[dict[str, Any]]) -> None:
    head = (
        f"{'setup':<8} {'users':>5} {'turns':>5} {'+TTFT ms':>13} {'token ms':>11}"
        f" {'locked ms':>11} {'turn s':>10} {'err':>4} {'once':>4} {'writes u/r':>10}"
        f" {'run/turn':>8} {'thr/turn':>8} {'pg steps':>8}  verdict"
    )
    print(head)
    print("-" * len(head))
    for run in runs:
        logged = run["writes"]
        per_message, runs_, threads = "n/a", "n/a", "n/a"
        if logged:
            per_message = f"{logged['user_message']['mean']}/{logged['reply']['mean']}"
            runs_, threads = str(logged["run_steps_per_turn"]), str(logged["threads_per_turn"])
        tuples = run["tuple_writes_per_message"]
        steps = f"{tuples['steps']:g}" if tuples and "steps" in tuples else "n/a"
        misses = [k for k, ok in run["pass"].items() if not ok]
        verdict = "PASS" if not misses else "MISS " + ",".join(misses)
        print(
            f"{run['setup']:<8} {run['users']:>5} {run['turns']:>5}"
            f" {_pair(run['added_ttft_ms']):>13} {_pair(run['token_added_ms']):>11}"
            f" {_pair(run['locked_ms']):>11} {_pair(run['turn_s']):>10}"
            f" {run['errors']:>4} {'yes' if run['stored_once'] else 'NO':>4} {per_message:>10}"
            f" {runs_:>8} {threads:>8} {steps:>8}  {verdict}",
            flush=True,
        )
    print(
        "median/p95. +TTFT: send → first token, minus the endpoint's TTFT; token: each token's"
        " delay through the app;\nlocked: last token → task_end; once: every message and reply"
        " stored once; writes u/r: times each user message/reply was written (the write log);"
        "\nrun/turn, thr/turn: writes of Chainlit's run steps and of the thread per turn;"
        " pg steps: PostgreSQL's steps tuple writes per stored message.\n"
        f"Targets: +TTFT p95 <= {TARGET_TTFT_MS:g} ms, token p95 <= {TARGET_TOKEN_MS:g} ms,"
        " 0 errors, stored once, written once."
    )
    print(f"\n{'setup':<8} {'users':>5}  +TTFT ms (median/p95): users' first turns, later turns")
    for run in runs:
        print(
            f"{run['setup']:<8} {run['users']:>5}  {_pair(run['added_ttft_first_turns_ms']):>13}"
            f"  {_pair(run['added_ttft_later_turns_ms']):>13}"
        )
    print(
        f"\n{'setup':<8} {'users':>5} {'turns/s':>7}  CPU % of one core ({os.cpu_count()} cores;"
        " others: the rest of the machine); client loop lag ms"
    )
    for run in runs:
        cpu = "  ".join(f"{k} {v:g}" for k, v in run["cpu_pct"].items())
        rate = run["turns"] / run["seconds"] if run["seconds"] else 0
        print(
            f"{run['setup']:<8} {run['users']:>5} {rate:>7.1f}  {cpu};"
            f" lag {_pair(run['client_lag_ms'])}"
        )
    logged = [run for run in runs if run["writes"]]
    if logged:
        names = TIMELINE
        print(
            "\nWhere a turn's time goes, ms (median/p95): after sending, the user message's"
            " writes,\nthe request at the endpoint, the first and last token; after the last"
            " token, the reply's writes and task_end."
        )
        print(f"{'setup':<8} {'users':>5} " + " ".join(f"{n:>13}" for n in names.values()))
        for run in logged:
            points = run["writes"]["timeline_ms"]
            cells = [_pair(points[k]) if k in points else "-" for k in names]
            print(f"{run['setup']:<8} {run['users']:>5} " + " ".join(f"{c:>13}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", default="sqlite1,pg2", help="sqlite1, pg2 or both")
    parser.add_argument("--users", default="5,10,25,50", help="user counts, comma-separated")
    parser.add_argument("--messages", type=int, default=6, help="messages per user (6)")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply (40)")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="between tokens (20)")
    parser.add_argument(
        "--ramp",
        type=float,
        help="seconds over which the users start, evenly (one reply's length; 0: all at once)",
    )
    parser.add_argument("--turn-timeout", type=float, default=120.0, help="seconds (120)")
    parser.add_argument(
        "--no-write-log",
        dest="write_log",
        action="store_false",
        help="leave out the triggers that log each write of steps and threads",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve-endpoint", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_endpoint:
        serve_endpoint(args.serve_endpoint, args.tokens, args.interval_ms)
        return 0
    setups = [s.strip() for s in args.setup.split(",") if s.strip()]
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown set-up {', '.join(sorted(unknown))}; choose from {SETUPS}")
    counts = [int(n) for n in args.users.split(",") if n.strip()]
    print(
        f"load: {args.messages} messages a user, replies of {args.tokens} tokens every"
        f" {args.interval_ms:g} ms, users starting over {_ramp(args):g} s;"
        f" {os.cpu_count()} CPUs, load average"
        f" {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="chatllm-load-"))
    scratch.chmod(0o755)  # PostgreSQL runs as its own user under root
    endpoint = Endpoint(args.tokens, args.interval_ms, scratch / "endpoint.log")
    pg: PostgresServer | None = None
    try:
        endpoint.start()
        for setup in setups:
            if setup == "pg2":
                # Durable, as `make cluster` runs it (a root of its own: fsync on).
                pg = PostgresServer(root=scratch / "postgres").start()
            for users in counts:
                print(f"{setup}: {users} users …", flush=True)
                runs.append(measure(setup, users, args, endpoint, pg))
            if pg is not None:
                pg.stop()
                pg = None
    finally:
        if pg is not None:
            pg.stop()
        endpoint.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print_table(runs)
    for run in runs:
        for example in run["error_examples"] + run["store_problems"]:
            print(f"  {run['setup']} {run['users']}: {example}")
    ok = all(run["pass"]["errors"] and run["stored_once"] for run in runs)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "ok": ok}, indent=2), "utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
