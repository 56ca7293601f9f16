"""Test helpers, all on real parts: a Chainlit session that records what the browser would
receive, a socket.io tab on the running app, the app started as `make run` starts it, a real
OpenAI-compatible server (llama-cpp-python's own) on loopback, and a wire tap in front of it."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chainlit as cl
import httpx
import socketio
from chainlit.config import FILES_DIRECTORY
from chainlit.context import init_ws_context
from chainlit.session import WebsocketSession

from chatllm.chat import ChatApp, ChatSession
from chatllm.chat.session import KEY as SESSION_KEY
from chatllm.store import Database
from deploy.cluster import stop_process, wait_until_serving
from deploy.postgres import PostgresServer


def live_session() -> ChatSession:
    """The running chat's session, as the app left it."""
    session = cl.user_session.get(SESSION_KEY)
    assert isinstance(session, ChatSession), "no chat has started in this tab"
    return session


@functools.cache
def _has_glyph(char: str) -> bool:
    """Whether an installed font draws `char` (fontconfig, as Chromium finds its fonts)."""
    listed = subprocess.run(
        ["fc-list", f":charset={ord(char):x}", "family"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return bool(listed.stdout.strip())


def missing_glyphs(text: str) -> set[str]:
    """The characters of `text` no installed font can draw: shown as empty boxes."""
    drawn = {c for c in text if not c.isspace() and unicodedata.category(c)[0] not in "CZ"}
    return {c for c in drawn if ord(c) > 0x7E and not _has_glyph(c)}


def panel_widgets(panel: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A settings panel's widgets in order, its tabs taken apart."""
    return [w for item in panel for w in (item["inputs"] if "inputs" in item else [item])]


@dataclass
class BrowserTab:
    """One Chainlit websocket session; `events` holds every (event, payload) sent to it."""

    language: str = "en-US"
    chat_profile: str | None = None
    events: list[tuple[str, Any]] = field(default_factory=list)
    session: WebsocketSession = field(init=False)
    #: Called once, in the replying task itself, when this many tokens have streamed in:
    #: what a person does on seeing the reply start (press Stop), at exactly that point,
    #: however busy the machine.
    on_tokens: tuple[int, Callable[[], object]] | None = None

    def __post_init__(self) -> None:
        async def emit(event: str, data: Any) -> None:
            json.dumps(data, default=str)  # what the socket would have to send
            self.events.append((event, data))
            if self.on_tokens is not None and len(self.tokens()) >= self.on_tokens[0]:
                _, act = self.on_tokens
                self.on_tokens = None
                act()

        async def emit_call(*_: Any) -> None:
            return None

        self.session = WebsocketSession(
            id=str(uuid.uuid4()),
            socket_id=str(uuid.uuid4()),
            emit=emit,
            emit_call=emit_call,
            user_env={},
            client_type="webapp",
            environ={"HTTP_ACCEPT_LANGUAGE": self.language},
            thread_id=str(uuid.uuid4()),
            chat_profile=self.chat_profile,
        )

    def enter(self) -> None:
        """Make this tab the Chainlit context of the running task."""
        # Chainlit keeps sessions' files under .files, made at import and removed when a
        # Chainlit server stops: the browser tests' app, run from this directory, does.
        FILES_DIRECTORY.mkdir(parents=True, exist_ok=True)
        init_ws_context(self.session)

    def payloads(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    def panels(self) -> list[list[dict[str, Any]]]:
        """Each settings panel shown, its widgets in order, its tabs taken apart."""
        return [panel_widgets(panel) for panel in self.payloads("chat_settings")]

    def tokens(self) -> list[str]:
        return [data["token"] for data in self.payloads("stream_token")]

    def messages(self) -> list[dict[str, Any]]:
        """Every message shown, in its final form (later updates replace earlier ones)."""
        shown: dict[str, dict[str, Any]] = {}
        for name, data in self.events:
            if name in ("new_message", "update_message", "stream_start"):
                shown[data["id"]] = data
            elif name == "delete_message":
                shown.pop(data["id"], None)
        return list(shown.values())

    def errors(self) -> list[str]:
        return [m["output"] for m in self.messages() if m.get("isError")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_files(
    database_url: str, data_dir: Path, postgres: PostgresServer | None
) -> list[Path]:
    """Every file a database keeps its data in, to look for what must never be stored:
    SQLite's file, its WAL and shared memory (in `data_dir`); or the PostgreSQL
    database's own files and the server's write-ahead log, after a checkpoint."""
    if postgres is None:
        return list(data_dir.glob("chatllm.db*"))
    name = database_url.rsplit("/", 1)[1]
    postgres.psql("CHECKPOINT")  # what is only in memory now is written out
    oid = postgres.psql(f"SELECT oid FROM pg_database WHERE datname = '{name}'").strip()
    places = [postgres.data / "base" / oid, postgres.data / "pg_wal"]
    return [f for place in places for f in place.rglob("*") if f.is_file()]


def command_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """An operator's environment for `python -m chatllm`: none of this shell's CHATLLM_
    settings, the data directory, and `settings` (e.g. CHATLLM_DATABASE_URL=…)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLLM_")}
    return {**env, "CHATLLM_DATA_DIR": str(data_dir), **settings}


def run_command(
    env: Mapping[str, str], *argv: str, stdin: str | bytes | None = None, timeout: float = 300
) -> tuple[int, str]:
    """`python -m chatllm …` run as an operator runs it: its exit status and what it
    printed (stdout, then stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "chatllm", *argv],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        cwd=ROOT,
        env=dict(env),
        timeout=timeout,
    )
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace").strip()


@dataclass
class Endpoint:
    """llama-cpp-python's OpenAI-compatible server serving a GGUF on 127.0.0.1."""

    model_path: Path
    api_key: str = "test-key"
    alias: str = "smollm2"
    interrupt: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: The server's stderr.
    log: Path = field(default_factory=lambda: Path(tempfile.mkdtemp()) / "endpoint.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> None:
        with self.log.open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "llama_cpp.server",
                    "--model",
                    str(self.model_path),
                    "--model_alias",
                    self.alias,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--api_key",
                    self.api_key,
                    "--n_ctx",
                    "2048",
                    # By default the server cuts a streaming reply short (no text, no finish
                    # reason) when another request arrives; the app says so when it happens.
                    "--interrupt_requests",
                    str(self.interrupt).lower(),
                    "--verbose",
                    "false",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        request = urllib.request.Request(
            f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.api_key}"}
        )
        wait_until_serving(self.process, request, "llama_cpp.server", self.log, timeout)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


ROOT = Path(__file__).resolve().parent.parent
CHAINLIT = str(Path(sys.executable).with_name("chainlit"))


@dataclass
class AppServer:
    """The app started as `make run` starts it (without the install step), on a free
    loopback port, with its own data directory and a clean environment."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: CHATLLM_ settings for this app, beside its data directory
    env: dict[str, str] = field(default_factory=dict)
    #: `chainlit run --root-path`: every route under it ("" for none)
    root_path: str = ""

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        """Where the app's routes are: its origin, and the root path it is served under."""
        return self.origin + self.root_path

    @property
    def log(self) -> Path:
        """The app's stderr (its log, and its engine's)."""
        return self.data_dir / "app.log"

    def start(self, timeout: float = 120.0) -> AppServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLLM_", "CHAINLIT_"))}
        with self.log.open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [
                    CHAINLIT,
                    "run",
                    "app.py",
                    "--headless",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *(["--root-path", self.root_path] if self.root_path else []),
                ],
                cwd=ROOT,
                env={**env, **self.env, "CHATLLM_DATA_DIR": str(self.data_dir)},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        request = urllib.request.Request(self.base + "/health")
        wait_until_serving(self.process, request, "the app", self.log, timeout)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


#: A message and the slider values under which the embedded model's reply is long (466
#: tokens: its seed fixes it), so a test can stop, kill or wait behind it whatever the
#: machine's speed, and never find it already finished.
LONG_STORY = "Tell me a very long story about the moon."
LONG_SETTINGS: dict[str, object] = {"max_tokens": 2000, "temperature": 0.9, "seed": "7"}


def press_stop() -> None:
    """Chainlit's Stop button: cancel the task writing the reply (called from within it)."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()


def freeze(pid: int | None) -> None:
    """Freeze a process (SIGSTOP): an engine stays mid-reply until it is killed or thawed."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)


def thaw(pid: int | None) -> None:
    """Let a frozen process run again (SIGCONT)."""
    assert pid is not None
    os.kill(pid, signal.SIGCONT)


async def until(condition: Callable[[], object], seconds: float = 60, what: str = "") -> None:
    """Wait, polling, until `condition()` is true; fail after `seconds` (a bound, not a
    measure: the test is about what happens, never how fast)."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


async def open_chat(app: ChatApp, tab: BrowserTab) -> None:
    tab.enter()
    await app.start()


async def say(app: ChatApp, tab: BrowserTab, text: str) -> None:
    tab.enter()
    await app.answer(cl.Message(content=text, author="User", type="user_message"))


def split_base(base: str) -> tuple[str, str]:
    """An app's address as its origin and the root path its routes are under."""
    parts = urllib.parse.urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")


async def socket_connects(base: str, headers: Mapping[str, str]) -> bool:
    """Whether the app's socket accepts a connection sent with `headers` (a cookie, an
    Origin): the handshake only, closed again at once."""
    client = socketio.AsyncClient()
    origin, path = split_base(base)
    try:
        await client.connect(
            origin,
            socketio_path=path + "/ws/socket.io",
            transports=["websocket"],
            headers=dict(headers),
            auth={"clientType": "webapp", "sessionId": "s", "threadId": "t", "userEnv": "{}"},
            wait_timeout=10,
        )
    except socketio.exceptions.ConnectionError:
        return False
    finally:
        await client.shutdown()
    return True


class SocketUser:
    """A browser tab's socket.io conversation with the running app, in local mode."""

    def __init__(
        self,
        base: str,
        thread_id: str | None = None,
        transports: Sequence[str] = ("websocket",),
        language: str = "en-US",
    ) -> None:
        self.base = base
        #: The browser's Accept-Language, which Chainlit takes the chat's language from.
        self.language = language
        #: ("websocket",), or a browser's ("polling", "websocket"): polls, then upgrades.
        self.transports = list(transports)
        self.thread_id = thread_id or str(uuid.uuid4())
        self.events: list[tuple[str, dict[str, object]]] = []
        self.client = socketio.AsyncClient()
        self.session_id = str(uuid.uuid4())
        self.cookies: dict[str, str] = {}

        @self.client.on("*")
        async def record(event: str, data: object = None) -> None:
            self.events.append((event, data if isinstance(data, dict) else {"data": data}))

    async def connect(self, cookies: Mapping[str, str] | None = None, start: bool = True) -> None:
        """Connect as the signed-in user of `cookies` (else the local user), and open the
        chat (`start`) as the page does once connected."""
        if cookies is None:
            cookies = httpx.post(self.base + "/auth/header", timeout=30).cookies
        self.cookies = dict(cookies)
        origin, path = split_base(self.base)
        await self.client.connect(
            origin,
            socketio_path=path + "/ws/socket.io",
            transports=self.transports,
            headers={
                "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
                "Accept-Language": self.language,
            },
            auth={
                "clientType": "webapp",
                "sessionId": self.session_id,
                "threadId": self.thread_id,
                "userEnv": "{}",
            },
            wait_timeout=10,
        )
        if start:
            await self.client.emit("connection_successful")
            await self.wait_for(lambda: self.named("chat_settings"))
            await self.wait_for(lambda: self.named("task_end"))  # the chat's start has ended

    def answer_file_questions(self, name: str, content: bytes, mime: str) -> None:
        """Answer the app's file questions (its "ask" calls) as the page does: upload the
        file over HTTP to the question's session and parent, then answer with its id."""

        async def ask(data: dict[str, Any]) -> list[dict[str, str]]:
            self.events.append(("ask", data))
            async with httpx.AsyncClient(cookies=self.cookies, timeout=30) as http:
                uploaded = await http.post(
                    self.base + "/project/file",
                    params={
                        "session_id": self.session_id,
                        "ask_parent_id": data["msg"]["parentId"],
                    },
                    files={"file": (name, content, mime)},
                )
            uploaded.raise_for_status()
            return [{"id": uploaded.json()["id"]}]

        self.client.on("ask", ask)

    async def say(
        self, text: str, command: str | None = None, **settings: object
    ) -> dict[str, object]:
        """Send `text` (after `settings`) as the page does; the message as sent."""
        if settings:
            await self.apply_settings(settings)
        message = {
            "id": str(uuid.uuid4()),
            "threadId": self.thread_id,
            "name": "User",
            "type": "user_message",
            "output": text,
            "createdAt": "2026-01-01T00:00:00Z",
            "command": command,
        }
        await self.client.emit("client_message", {"message": message, "fileReferences": []})
        return message

    async def apply_settings(self, settings: Mapping[str, object]) -> None:
        """The settings panel confirmed, as the page does, and applied: the app shows the
        panel again, and the handler's task ends (Chainlit runs it as a task: a task_end of
        its own, which must not be taken for a message's)."""
        shown, ended = len(self.named("chat_settings")), len(self.named("task_end"))
        await self.client.emit("chat_settings_change", dict(settings))
        await self.wait_for(
            lambda: len(self.named("chat_settings")) > shown and len(self.named("task_end")) > ended
        )

    def named(self, event: str) -> list[dict[str, object]]:
        return [data for name, data in self.events if name == event]

    def errors(self) -> list[str]:
        return [str(m["output"]) for m in self.named("new_message") if m.get("isError")]

    def model_replies(self) -> list[dict[str, object]]:
        """Finished replies the app made (not Chainlit's own notes, such as its stop notice)."""
        return [m for m in self.finished_replies() if (m.get("metadata") or {}).get("kind")]

    async def turn(
        self, text: str, command: str | None = None, seconds: float = 60, **settings: object
    ) -> dict[str, object]:
        """Send `text` and wait until its turn has ended: its reply shown and, since the
        app stores it before its handler returns, stored. The message as sent."""
        before = len(self.model_replies())
        if settings:
            await self.apply_settings(settings)
        ended = len(self.named("task_end"))  # the message's own is the next
        message = await self.say(text, command)
        await self.wait_for(
            lambda: len(self.model_replies()) > before and len(self.named("task_end")) > ended,
            seconds,
        )
        return message

    def finished_replies(self) -> list[dict[str, object]]:
        """Replies as they were last sent, once their text is there (a streamed reply is
        sent again at its end), one per message, in the order they first appeared."""
        latest: dict[object, dict[str, object]] = {}
        for name, data in self.events:
            if name in ("new_message", "update_message") and data.get("type") == (
                "assistant_message"
            ):
                latest[data["id"]] = data
        return [m for m in latest.values() if m.get("output") and not m.get("isError")]

    async def wait_for(self, condition: Callable[[], object], seconds: float = 60) -> None:
        for _ in range(int(seconds / 0.05)):
            if condition():
                return
            await asyncio.sleep(0.05)
        names = [name for name, _ in self.events][-20:]
        said = [str(m.get("output"))[:200] for m in self.named("new_message")][-3:]
        raise AssertionError(f"timed out; events: {names}; the last messages: {said}")


def children(pid: int) -> list[int]:
    """The processes `pid` started (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    return found


@dataclass
class Seen:
    """One request as it reached the server through `WireTap`."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int = 0  # the port of the connection it came over

    def json(self) -> Any:
        return json.loads(self.body)


class WireTap:
    """A loopback HTTP proxy in front of a real server: it records every request as it
    goes over the wire, and can answer the next ones with an error or hold them a while.

    For checks of what the app sends (sampling values, retries, timeouts) that reading the
    client object's own attributes cannot make."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:PORT (no /v1)
        self.seen: list[Seen] = []
        self.in_flight = 0  # requests taken and not yet answered
        self.most_in_flight = 0  # the most at once: requests sent in parallel overlap here
        self._count_lock = threading.Lock()
        self.on_request: Callable[[Seen], object] | None = None  # told of each, as it arrives
        self.fail_next = 0  # answer this many next requests with `fail_status`
        self.fail_status = 500
        self.hold_seconds = 0.0  # hold each request this long before forwarding it
        self.released = threading.Event()  # set to let held requests go at once
        #: JSON body fields left out of what is forwarded: the server never sees them, as
        #: a server that ignores them would behave (what is recorded is what was sent)
        self.drop_fields: set[str] = set()
        tap = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                return None

            def _relay(self) -> None:
                with tap._count_lock:
                    tap.in_flight += 1
                    tap.most_in_flight = max(tap.most_in_flight, tap.in_flight)
                try:
                    self._forward()
                finally:
                    with tap._count_lock:
                        tap.in_flight -= 1

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                tap.seen.append(
                    Seen(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        self.client_address[1],
                    )
                )
                if tap.on_request is not None:
                    tap.on_request(tap.seen[-1])
                if tap.hold_seconds:
                    tap.released.wait(tap.hold_seconds)
                if tap.fail_next > 0:
                    tap.fail_next -= 1
                    body = b'{"error": {"message": "injected failure"}}'
                    self._answer(tap.fail_status, body, {})
                    return
                if tap.drop_fields and body:
                    sent = json.loads(body)
                    body = json.dumps({k: v for k, v in sent.items() if k not in tap.drop_fields})
                    body = body.encode()
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "connection", "content-length")
                }
                request = urllib.request.Request(
                    tap.upstream + self.path,
                    data=body or None,
                    headers=headers,
                    method=self.command,
                )
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        self._answer(response.status, response.read(), response.headers)
                except urllib.error.HTTPError as error:
                    self._answer(error.code, error.read(), error.headers)

            def _answer(self, status: int, body: bytes, headers: Any) -> None:
                self.send_response(status)
                kept = ("content-type",)
                for key, value in dict(headers).items():
                    if key.lower() in kept:
                        self.send_header(key, value)
                if not any(k.lower() == "content-type" for k in dict(headers)):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def chat_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("/chat/completions")]

    def start(self) -> WireTap:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


async def refuse_inserts(db: Database, table: str, when: str = "TRUE") -> None:
    """Make the database refuse new rows of `table` (where `when`, a condition on NEW) with
    "disk full", as a failing disk would: a trigger, in each database's own language."""
    if db.dialect.name == "sqlite":
        await db.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {table} WHEN {when}"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    else:
        await db.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF {when} THEN RAISE EXCEPTION 'disk full'; END IF; RETURN NEW; END $$"
        )
        await db.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
