"""The local model's engine process, supervised from the app.

llama.cpp runs in a child process (`chatllm.engine.worker`), never in the web process: a
native fault, an out-of-memory kill or a hang there fails the reply in progress with a
clear error, and a new engine starts for the next one; every other session goes on.

One reading thread per engine process hands each message to the request it belongs to
(`Sink`); a request in flight when the process ends gets `("lost", rid, error)`.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from chatllm.engine.cpus import default_threads
from chatllm.errors import ConfigError, EngineCrashed, EngineHung, EngineUnavailable

log = logging.getLogger("chatllm.engine")

Message = tuple[Any, ...]
Sink = Callable[[Message], None]

#: After a failed start, the next request tries again once this many seconds have passed.
RETRY_AFTER_SECONDS = 10.0


@dataclass(frozen=True)
class EngineSpec:
    """What an engine process loads, and how long it may take."""

    model_path: Path
    n_ctx: int
    n_threads: int | None = None
    #: Loading the model and its self-check; beyond this the start has failed.
    start_timeout: float = 120.0
    #: The longest a running engine may go without a sign of life (a token, a prompt chunk,
    #: an answer) before it is declared hung, killed and restarted.
    hang_timeout: float = 60.0


class EngineProcess:
    """One llama.cpp engine in a child process, restarted when it dies.

    Thread-safe: requests come from event loops and worker threads alike.
    """

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sinks: dict[int, Sink] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        self._ready = threading.Event()
        self._starting = False
        self._closed = False
        self._hung = False
        self._failure: EngineUnavailable | None = None
        self._failed_at = 0.0
        self._start_done = threading.Condition(self._lock)
        self._start_wanted: Future[None] | None = None  # `start_soon`'s, while it runs
        self.info: dict[str, Any] = {}
        self.starts = 0
        #: Stop requests sent (a Stop pressed, a tab closed mid-reply), over all processes.
        self.stops = 0
        #: Tokens the running engine process has sampled, over all its generations.
        self.generated = 0
        #: When the engine last sent anything (for any request), or was sent a request.
        self.last_heard = time.monotonic()
        _live.add(self)

    # ---- state

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def failure(self) -> EngineUnavailable | None:
        """Why the engine is not running, after a start that failed."""
        return self._failure

    # ---- starting

    def start(self) -> None:
        """Start the engine and wait until it has passed its self-check (blocking).

        Raises `ConfigError` when the model file cannot be loaded at all, and
        `EngineUnavailable` when the engine fails its self-check, dies or does not start
        in time. Returns at once if it is running; waits if another thread is starting it.
        """
        with self._lock:
            waited = self._starting
            while self._starting:
                self._start_done.wait()
            if self._ready.is_set():
                return
            if waited and self._failure is not None:  # the start just waited for failed
                raise self._failure
            if self._closed:
                raise EngineUnavailable("the engine has been shut down")
            self._starting = True
        try:
            self._spawn()
        except (EngineUnavailable, ConfigError) as exc:
            with self._lock:
                self._failure = (
                    exc
                    if isinstance(exc, EngineUnavailable)
                    else EngineUnavailable(str(exc), cause="load")
                )
                self._failed_at = time.monotonic()
            raise
        finally:
            with self._lock:
                self._starting = False
                self._start_done.notify_all()

    def ensure_started(self) -> None:
        """Start the engine if it is not running; after a failed start, try again only
        once RETRY_AFTER_SECONDS have passed, else raise that failure again."""
        if self._ready.is_set():
            return
        failure = self._failure
        if failure is not None and time.monotonic() - self._failed_at < RETRY_AFTER_SECONDS:
            raise failure
        try:
            self.start()
        except ConfigError as exc:
            raise EngineUnavailable(str(exc), cause="load") from exc

    def start_soon(self) -> Future[None]:
        """`ensure_started` in a thread of its own, one for everyone who asks while it
        runs: a future done once the engine runs, or holding why it does not. An event
        loop waits on it holding no thread (`LocalEngine`), however many requests wait."""
        with self._lock:
            if self._ready.is_set():
                running: Future[None] = Future()
                running.set_result(None)
                return running
            wanted = self._start_wanted
            if wanted is None or wanted.done():
                wanted = self._start_wanted = Future()
                threading.Thread(
                    target=self._start_for, args=(wanted,), name="engine-start", daemon=True
                ).start()
            return wanted

    def _start_for(self, wanted: Future[None]) -> None:
        try:
            self.ensure_started()
        except Exception as exc:  # EngineUnavailable, or anything else: never left pending
            wanted.set_exception(exc)
        else:
            wanted.set_result(None)

    def _spawn(self) -> None:
        spec = self.spec
        ours, theirs = socket.socketpair()
        command = [
            sys.executable,
            "-m",
            "chatllm.engine.worker",
            "--fd",
            str(theirs.fileno()),
            "--parent",
            str(os.getpid()),
            "--model",
            str(spec.model_path),
            "--n-ctx",
            str(spec.n_ctx),
            "--n-threads",  # one per physical core unless set (chatllm/engine/cpus.py)
            str(spec.n_threads or default_threads()),
        ]
        try:
            process = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the app is not delivered here
            )
        except OSError as exc:
            ours.close()
            raise EngineUnavailable(f"the engine process could not start ({exc})") from exc
        finally:
            theirs.close()
        connection = Connection(ours.detach())
        self.starts += 1
        try:
            first = _receive_within(connection, spec.start_timeout)
        except TimeoutError:
            _kill(process)
            process.wait()  # reaped: no zombie left behind
            connection.close()
            raise EngineUnavailable(
                f"the engine did not load the model within {spec.start_timeout:g} s",
                cause="timeout",
            ) from None
        except (EOFError, OSError):
            code = process.wait()
            connection.close()
            raise EngineUnavailable(
                f"the engine process {exit_description(code)} while loading the model "
                f"and checking it on a {_self_check_tokens()}-token prompt"
                + (f" — {ILLEGAL_INSTRUCTION_HINT}" if code == -signal.SIGILL else ""),
                cause="crash",
            ) from None
        if first[0] == "failed":
            _, stage, text = first
            process.wait()
            connection.close()
            if stage == "load":
                raise ConfigError(
                    f"The model file {str(spec.model_path)!r} could not be loaded ({text}). "
                    "Set CHATLLM_MODEL_PATH to a GGUF model file, or leave it empty to use "
                    "the embedded model."
                )
            raise EngineUnavailable(f"the engine failed its self-check: {text}", cause="crash")
        _, info = first
        with self._lock:
            self._process = process
            self._connection = connection
            self.generated = 0
            self.last_heard = time.monotonic()
            self._hung = False
            self._failure = None
            self.info = info
            self._ready.set()
        log.info(
            "Local engine ready: pid %s, %s-token self-check in %s ms; llama.cpp built with %s",
            process.pid,
            info.get("self_check_tokens"),
            info.get("self_check_ms"),
            str(info.get("system_info", "")).strip(" |"),
        )
        threading.Thread(
            target=self._read, args=(process, connection), name="engine-reader", daemon=True
        ).start()

    # ---- requests

    def submit(self, message: Message, sink: Sink) -> int:
        """Send `message` (its request id filled in) and hand every answer to `sink`.
        Starts the engine first if it is not running (blocking)."""
        self.ensure_started()
        rid = self.submit_if_running(message, sink)
        if rid is None:
            raise EngineCrashed("the engine stopped before the request reached it")
        return rid

    def submit_if_running(self, message: Message, sink: Sink) -> int | None:
        """`submit`, or None at once when the engine is not running (never starts it)."""
        with self._lock:
            connection = self._connection
            if not self._ready.is_set() or connection is None:
                return None
            rid = next(self._ids)
            self._sinks[rid] = sink
            # Silence is counted from the newest request: an idle engine is not a hung one.
            self.last_heard = time.monotonic()
            try:
                connection.send((message[0], rid, *message[1:]))
            except OSError as exc:
                del self._sinks[rid]
                raise EngineCrashed(f"the engine stopped ({exc})") from exc
        return rid

    def send(self, message: Message) -> None:
        """A message needing no answer (a stop); dropped if the engine is not running."""
        with self._lock:
            connection = self._connection
            if connection is None:
                return
            try:
                connection.send(message)
            except OSError:
                pass  # the reading thread sees the end and fails the requests

    def stop(self, rid: int) -> None:
        """Ask the engine to stop request `rid` before its next token."""
        self.stops += 1
        self.send(("stop", rid))

    def forget(self, rid: int) -> None:
        with self._lock:
            self._sinks.pop(rid, None)

    def counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes, asked of the running engine (blocking, briefly).

        Starts the engine on first use, as the model loads on first use; never waits for
        a restart: raises `EngineUnavailable` at once then, so a caller on the event loop
        is not held up by it.
        """
        if not self._ready.is_set():
            if self.starts or self._starting:
                raise self._failure or EngineUnavailable("the engine is restarting")
            self.ensure_started()
        answered = threading.Event()
        answer: list[Message] = []

        def sink(message: Message) -> None:
            answer.append(message)
            answered.set()

        rid = self.submit(("count", list(texts)), sink)
        try:
            if not answered.wait(self.spec.hang_timeout):
                self.kill_hung()
                raise EngineHung(self.spec.hang_timeout)
        finally:
            self.forget(rid)
        message = answer[0]
        if message[0] == "lost":
            raise message[2]
        return list(message[2])

    def silent_for(self) -> float:
        """Seconds since the engine last sent anything (or was last sent a request)."""
        return time.monotonic() - self.last_heard

    def kill_hung(self) -> None:
        """The engine gave no sign of life in time: end it; its requests fail as hung.

        Takes no lock: a thread holding it may be the one stuck writing to the engine."""
        process = self._process
        self._hung = True
        if process is not None:
            log.error("Local engine (pid %s) gave no sign of life; killing it", process.pid)
            _kill(process)

    # ---- the reading thread

    def _read(self, process: subprocess.Popen[bytes], connection: Connection) -> None:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                break
            self.last_heard = time.monotonic()
            if message[0] == "done":
                self.generated = message[2]
            sink = self._sinks.get(message[1])
            if sink is not None:
                sink(message)
        self._ended(process, connection)

    def _ended(self, process: subprocess.Popen[bytes], connection: Connection) -> None:
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # it closed its end but lives on
            _kill(process)
            code = process.wait()
        connection.close()
        with self._lock:
            hung, closed = self._hung, self._closed
            if self._process is process:
                self._process = None
                self._connection = None
                self._ready.clear()
            sinks, self._sinks = self._sinks, {}
        error: EngineCrashed | EngineHung = (
            EngineHung(self.spec.hang_timeout) if hung else EngineCrashed(exit_description(code))
        )
        if closed:
            return
        log.error("Local engine (pid %s) %s; starting a new one", process.pid, error)
        for rid, sink in sinks.items():
            sink(("lost", rid, error))
        threading.Thread(target=self._restart, name="engine-restart", daemon=True).start()

    def _restart(self) -> None:
        try:
            self.start()
        except (EngineUnavailable, ConfigError) as exc:
            log.error("The local engine could not be restarted: %s", exc)

    # ---- ending

    def close(self) -> None:
        """End the engine process (at exit, or when a test is done with it)."""
        with self._lock:
            self._closed = True
            process, connection = self._process, self._connection
            self._ready.clear()
        if connection is not None:
            try:
                connection.send(("shutdown",))
            except OSError:
                pass
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill(process)
                process.wait()


#: What a SIGILL in the engine most likely means, for the operator.
ILLEGAL_INSTRUCTION_HINT = (
    "the installed llama.cpp uses CPU instructions this machine cannot run; build it for "
    "this CPU (the README's section “The CPU build” says how)"
)


def exit_description(code: int | None) -> str:
    """How a process ended, in words ('was killed by SIGKILL', 'exited with status 3')."""
    if code is None:
        return "ended"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        described = f"was killed by {name}"
        if -code == signal.SIGILL:
            described += " (illegal instruction)"
        elif -code == signal.SIGKILL:
            described += " (out of memory, or killed)"
        elif -code == signal.SIGSEGV:
            described += " (segmentation fault)"
        return described
    return f"exited with status {code}"


def _self_check_tokens() -> int:
    from chatllm.engine.worker import SELF_CHECK_TOKENS

    return SELF_CHECK_TOKENS


def _receive_within(connection: Connection, seconds: float) -> Message:
    if not connection.poll(seconds):
        raise TimeoutError
    message: Message = connection.recv()
    return message


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        process.kill()
    except OSError:
        pass


_live: weakref.WeakSet[EngineProcess] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for engine in list(_live):
        engine.close()
