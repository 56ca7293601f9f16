"""The local model's engine: built for any x86-64 CPU, checked at start, and unable to take
the app down — a crash, a kill or a hang fails one reply, and the next one is answered."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from importlib.metadata import distribution
from pathlib import Path
from typing import TypeVar

import httpx
import llama_cpp
import pytest

from chatllm.auth import Passwords
from chatllm.backends.local import LocalBackend
from chatllm.chat import ChatApp
from chatllm.config import Settings
from chatllm.engine import process as engine_process
from chatllm.engine.client import (
    LocalEngine,
    close_local_engine,
    engine_spec,
    local_engine,
    start_local_engine,
)
from chatllm.engine.process import EngineProcess, EngineSpec
from chatllm.engine.worker import SELF_CHECK_TOKENS
from chatllm.errors import EngineUnavailable
from tests.support import (
    LONG_SETTINGS,
    LONG_STORY,
    AppServer,
    BrowserTab,
    Endpoint,
    SocketUser,
    children,
    freeze,
    live_session,
    open_chat,
    say,
    until,
)

LIB = Path(llama_cpp.__file__).parent / "lib"
GGML_CONFIG = "lib/cmake/ggml/ggml-config.cmake"

#: A question of about 200 tokens, answered in a chat as a user would send it.
LONG_QUESTION = (
    "Here are my notes from a week at the lighthouse. Monday: wind from the west, rain "
    "before midnight, three ships passing north, the lamp trimmed twice. Tuesday: calm, fog "
    "until noon, a fishing boat asked for the tide table, the keeper's cat slept on the "
    "logbook. Wednesday: a storm from the south-west, the shutters rattled all night, one "
    "pane cracked in the lantern room and was taped. Thursday: the supply boat came late "
    "with oil, bread, letters and a new wick; the cat caught a mouse in the store room. "
    "Friday: clear skies, the brass polished, the clockwork wound and oiled, two yachts "
    "anchored in the bay. Saturday: a school class visited and climbed all 112 steps. "
    "Sunday: rest. Which day had the worst weather, and why?"
)


def replies(tab: BrowserTab) -> list[dict[str, object]]:
    return [m for m in tab.messages() if m["type"] == "assistant_message" and not m["isError"]]


# ---- the build


@functools.cache
def disassembly() -> str:
    """Every native library llama-cpp-python installed, disassembled (the wheel holds each
    as several identical files: libggml-cpu.so, .so.0, .so.0.x.y)."""
    libraries = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in LIB.glob("*.so*")}
    assert any(p.name.startswith("libggml-cpu") for p in libraries.values())
    return "".join(objdump(library) for library in libraries.values())


def objdump(path: Path) -> str:
    return subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def amx_instructions(listing: str) -> list[str]:
    return re.findall(r"\t(tile\w+|ldtilecfg|sttilecfg|tdp\w+)\s", listing)


def avx512_registers(listing: str) -> list[str]:
    return re.findall(r"%zmm\d+", listing)


def test_the_build_checks_see_amx_and_avx512_where_they_are(tmp_path: Path) -> None:
    """The two checks below would fail on a build that has them (machine code assembled
    here with binutils, which provides objdump)."""
    source = tmp_path / "kernel.s"
    source.write_text(
        "kernel:\n\ttilezero %tmm4\n\ttileloadd (%rsi,%rdx,1), %tmm0\n"
        "\ttdpbssd %tmm1, %tmm2, %tmm3\n\ttilerelease\n"
        "\tvaddps %zmm1, %zmm2, %zmm3\n\tret\n"
    )
    subprocess.run(["as", str(source), "-o", str(tmp_path / "kernel.o")], check=True)
    listing = objdump(tmp_path / "kernel.o")
    assert amx_instructions(listing) == ["tilezero", "tileloadd", "tdpbssd", "tilerelease"]
    assert avx512_registers(listing) == ["%zmm1", "%zmm2", "%zmm3"]


def test_the_llama_cpp_build_has_no_amx_instructions() -> None:
    """AMX tile instructions fault on CPUs where llama.cpp's AMX kernels are used (llama.cpp
    PR #26954); the build leaves them out whatever CPU it was made on."""
    listing = disassembly()
    assert len(listing) > 1_000_000  # it disassembled the kernels
    assert amx_instructions(listing) == []


def test_the_llama_cpp_build_is_not_for_the_build_machine_alone() -> None:
    """Built with GGML_NATIVE off and an explicit AVX2 baseline, so the .venv or the wheel
    runs on any x86-64 machine with AVX2, whatever the build machine had (this one may
    have AVX-512: a native build would use its zmm registers)."""
    listing = disassembly()
    assert "%ymm" in listing  # AVX2 kernels are there
    assert avx512_registers(listing) == []  # and no AVX-512 ones
    # The flags llama.cpp's build recorded, installed with the package (see its RECORD).
    config = Path(str(distribution("llama_cpp_python").locate_file(GGML_CONFIG)))
    recorded = dict(re.findall(r"set\((GGML_\w+) \"?([^\")]*)\"?\)", config.read_text()))
    assert recorded["GGML_NATIVE"] == "OFF"
    assert recorded["GGML_AVX2"] == "ON"
    for flag in ("GGML_AVX512", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"):
        assert recorded[flag] == "OFF", flag


# ---- the self-check


def test_the_engine_checks_a_long_prompt_before_it_is_offered(settings: Settings) -> None:
    engine = local_engine(settings)
    engine.start()
    info = engine.process.info
    assert info["self_check_tokens"] == SELF_CHECK_TOKENS >= 128
    assert info["self_check_ms"] > 0
    # What the library says it was compiled with: AVX2, and neither AVX-512 nor AMX.
    assert "AVX2 = 1" in info["system_info"]
    assert "AVX512" not in info["system_info"] and "AMX" not in info["system_info"]
    assert engine.process.pid not in (None, os.getpid())  # llama.cpp runs in another process


def test_an_engine_that_fails_its_self_check_is_unavailable_with_the_reason(
    settings: Settings,
) -> None:
    # A context smaller than the self-check's prompt: llama.cpp refuses to evaluate it.
    process = EngineProcess(EngineSpec(model_path=settings.resolve_model_path(), n_ctx=64))
    try:
        with pytest.raises(EngineUnavailable, match="self-check"):
            process.start()
        assert not process.ready
        assert process.failure is not None
    finally:
        process.close()


@pytest.fixture
def engine_stalls_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine processes started from now on hang before they load anything."""
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(600)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


@pytest.mark.usefixtures("engine_stalls_at_start")
def test_an_engine_slower_to_start_than_its_timeout_is_given_up_and_ended(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATLLM_ENGINE_START_TIMEOUT", "1.5")
    configured = Settings(_env_file=None, data_dir=settings.data_dir)  # type: ignore[call-arg]
    process = EngineProcess(engine_spec(configured))
    before = set(children(os.getpid()))
    try:
        with pytest.raises(EngineUnavailable, match=r"within 1\.5 s") as late:
            process.start()
        assert late.value.cause == "timeout"
        assert not process.ready
        assert set(children(os.getpid())) == before  # the stalled process was ended
    finally:
        process.close()


@pytest.fixture
def engine_dies_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine processes started from now on die of SIGILL as they start, as a llama.cpp
    build with instructions the CPU lacks does (Python runs sitecustomize at start-up)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


@pytest.mark.usefixtures("engine_dies_at_start")
async def test_an_engine_that_crashes_at_start_leaves_the_endpoint_working(
    settings: Settings, endpoint: Endpoint
) -> None:
    crashing = settings.model_copy(
        update={
            "n_threads": 1,  # an engine of its own
            "openai_base_url": endpoint.base_url,
            "openai_api_key": endpoint.api_key,
            "openai_models": [endpoint.alias],
            "openai_max_retries": 0,
        }
    )
    failure = start_local_engine(crashing)
    assert failure is not None
    assert "SIGILL" in str(failure) and "CPU instructions" in str(failure)
    app = ChatApp(crashing)
    await app.prepare("127.0.0.1")
    profiles = await app.profiles(None, "zh-TW")
    assert [p.name for p in profiles] == [f"openai:{endpoint.alias}"]
    tab = BrowserTab(language="zh-TW", chat_profile=f"openai:{endpoint.alias}")
    await open_chat(app, tab)
    (notice,) = [m["output"] for m in tab.messages() if m["type"] == "assistant_message"]
    assert "本機模型目前無法使用" in notice and "SIGILL" in notice
    await app.update_settings({"max_tokens": 8, "temperature": 0.0})
    await say(app, tab, "Hello!")
    (reply,) = replies(tab)
    assert reply["output"]


async def test_an_engine_that_failed_to_start_is_tried_again_when_a_chat_asks(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = settings.model_copy(update={"n_threads": 1, "engine_hang_timeout": 12.0})
    crashing = tmp_path / "crashing"
    crashing.mkdir()
    (crashing / "sitecustomize.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(crashing))
    try:
        assert start_local_engine(own) is not None
        monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the CPU is fixed
        monkeypatch.setattr(engine_process, "RETRY_AFTER_SECONDS", 0.0)  # and it is time to retry
        backend = LocalBackend(own)
        with pytest.raises(EngineUnavailable, match="SIGILL"):  # said at once, and tried again
            await backend.models()
        await until(lambda: backend.engine.process.ready, what="the engine to start again")
        assert await backend.models() == [own.local_model_name]
    finally:
        close_local_engine(own)


# ---- a long prompt through the app


async def test_a_long_question_is_answered_in_the_chat(app: ChatApp) -> None:
    tab = BrowserTab()
    await open_chat(app, tab)
    await app.update_settings({"max_tokens": 16, "temperature": 0.0})
    await say(app, tab, LONG_QUESTION)
    (reply,) = replies(tab)
    assert reply["output"]
    receipt = reply["metadata"]["receipt"]
    assert receipt["prompt_tokens"] >= 128 + 50  # the question alone is over 128 tokens
    assert not receipt["tokens_estimated"]


# ---- a crash, a kill or a hang fails one reply only


@pytest.fixture
async def fragile(settings: Settings, tmp_path: Path) -> AsyncIterator[ChatApp]:
    """An app with an engine of its own, which these tests kill; hung after 10 s of silence
    (more than a busy machine keeps a working engine quiet: 3 s was, with other work on both
    cores)."""
    own = settings.model_copy(
        update={"engine_hang_timeout": 10.0, "data_dir": tmp_path, "n_threads": 1}
    )
    chat = ChatApp(own)
    await chat.prepare("127.0.0.1")
    yield chat
    close_local_engine(own)


async def start_long_reply(app: ChatApp, tab: BrowserTab) -> asyncio.Task[None]:
    """A reply under way, its engine then frozen (SIGSTOP) so that it is still mid-reply
    when the test does something to the engine, however busy the machine."""
    await open_chat(app, tab)
    await app.update_settings(LONG_SETTINGS)
    engine = local_engine(app.settings)
    engine.start()
    tab.on_tokens = (3, lambda: freeze(engine.process.pid))  # frozen right there
    task = asyncio.create_task(say(app, tab, LONG_STORY))
    await until(lambda: tab.on_tokens is None, what="the reply to start")
    return task


async def stored_reply(app: ChatApp, tab: BrowserTab) -> dict[str, object]:
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    (step,) = [s for s in thread["steps"] if s["type"] == "assistant_message"]
    return dict(step)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
async def test_an_engine_killed_mid_reply_fails_that_reply_only(
    fragile: ChatApp, sig: signal.Signals
) -> None:
    engine = local_engine(fragile.settings)
    bystander = BrowserTab(language="zh-CN")
    await open_chat(fragile, bystander)
    tab = BrowserTab(language="zh-TW")
    task = await start_long_reply(fragile, tab)
    victim = engine.process.pid
    assert victim is not None
    os.kill(victim, sig)
    os.kill(victim, signal.SIGCONT)  # a SIGSEGV is delivered as it runs again
    await asyncio.wait_for(task, timeout=30)  # the turn ends; the app did not
    (error,) = tab.errors()
    assert "本機模型的引擎在回覆途中停止了" in error and sig.name in error
    (partial,) = replies(tab)
    assert partial["output"] and partial["metadata"]["finish_reason"] == "error"
    stored = await stored_reply(fragile, tab)
    assert stored["output"] == partial["output"]  # what was written is kept
    assert stored["metadata"]["finish_reason"] == "error"  # type: ignore[index]
    tab.enter()
    assert [m.type for m in live_session().history] == ["human", "ai"]

    # A new engine answers the next message, and another user's chat goes on.
    await fragile.update_settings({"max_tokens": 8, "temperature": 0.0})
    await say(fragile, tab, "Hello again.")
    assert len(replies(tab)) == 2
    assert engine.process.pid not in (None, victim)
    await fragile.update_settings({"max_tokens": 8, "temperature": 0.0})
    await say(fragile, bystander, "你好")
    assert len(replies(bystander)) == 1 and bystander.errors() == []


async def test_a_hung_engine_is_killed_and_restarted(fragile: ChatApp) -> None:
    engine = local_engine(fragile.settings)
    tab = BrowserTab()
    task = await start_long_reply(fragile, tab)
    frozen = engine.process.pid  # alive, but not a token more (start_long_reply froze it)
    assert frozen is not None
    try:
        await asyncio.wait_for(task, timeout=30)
    finally:
        try:
            os.kill(frozen, signal.SIGCONT)
        except ProcessLookupError:
            pass
    (error,) = tab.errors()
    assert "stopped responding for 10 seconds" in error
    (partial,) = replies(tab)
    assert partial["output"] and partial["metadata"]["finish_reason"] == "error"
    with pytest.raises(ProcessLookupError):  # the hung process was killed
        for _ in range(50):
            os.kill(frozen, 0)
            await asyncio.sleep(0.1)
    await fragile.update_settings({"max_tokens": 8, "temperature": 0.0})
    await say(fragile, tab, "Are you back?")
    assert len(replies(tab)) == 2
    assert engine.process.pid not in (None, frozen)


async def test_a_reply_stopped_while_the_engine_restarts_is_never_generated(
    fragile: ChatApp,
) -> None:
    engine = local_engine(fragile.settings)
    engine.start()
    old = engine.process.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    while engine.process.ready:  # noqa: ASYNC110 - until the app has seen the engine end
        await asyncio.sleep(0.01)
    story = [{"role": "user", "content": LONG_STORY}]
    long = {"max_tokens": 2000, "temperature": 0.9, "top_k": 40, "seed": 7}

    async def reply(params: dict[str, object]) -> str:
        return "".join([delta async for delta, _, _ in engine.stream(story, params)])

    waiting = asyncio.create_task(reply(long))  # waits for the new engine
    await asyncio.sleep(0.01)
    waiting.cancel()  # Stop, before the new engine took the request
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await reply({"max_tokens": 4, "temperature": 0.0, "seed": 1})
    assert engine.process.pid not in (None, old)
    # The new engine's tokens: this reply's 4, and none of the 2,000 the stopped request
    # would have made for nobody before this reply's turn came.
    assert engine.process.generated == 4


#: Threads in asyncio's default pool (`ThreadPoolExecutor()`'s own default): 6 on 2 cores.
DEFAULT_POOL = min(32, (os.cpu_count() or 1) + 4)

#: How much longer than the model's load an engine start takes in the test below.
SLOW_START_SECONDS = 5


async def test_logins_and_file_reads_go_on_while_the_engine_restarts(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users typing while a crashed engine restarts (a large model's load) wait for it; a
    login's Argon2 check and an element file's read, on the default thread pool, do not."""
    engine = LocalEngine(engine_spec(settings.model_copy(update={"n_threads": 1})))
    try:
        engine.start()
        old = engine.process.pid
        assert old is not None
        slow = tmp_path / "slow"
        slow.mkdir()
        (slow / "sitecustomize.py").write_text(f"import time\ntime.sleep({SLOW_START_SECONDS})\n")
        monkeypatch.setenv("PYTHONPATH", str(slow))  # engines started from now on
        os.kill(old, signal.SIGKILL)
        await until(lambda: not engine.process.ready, what="the app to see the engine end")

        # More messages waiting for the new engine than the default pool has threads.
        story = [{"role": "user", "content": "Hello!"}]
        reply = {"max_tokens": 4, "temperature": 0.0, "seed": 1}
        waiting = [
            asyncio.create_task(engine.prepare_counts([f"message {n}"]))
            for n in range(DEFAULT_POOL + 2)
        ]
        waiting.append(asyncio.create_task(collect(engine.stream(story, reply))))
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in waiting)

        passwords = Passwords()
        stored = passwords.hash("ada-pass")
        (data, file_read), (matched, login) = await asyncio.gather(
            timed(asyncio.to_thread((slow / "sitecustomize.py").read_bytes)),
            timed(passwords.averify(stored, "ada-pass")),
        )
        print(f"file read {file_read * 1000:.0f} ms, login {login * 1000:.0f} ms")
        assert data and file_read < 0.5
        assert matched and login < 1.0
        assert not engine.process.ready  # both measured while the engine was starting

        await asyncio.wait_for(asyncio.gather(*waiting), timeout=60)  # all then answered
        assert engine.process.pid not in (None, old)
    finally:
        engine.close()


T = TypeVar("T")


async def timed(work: Awaitable[T]) -> tuple[T, float]:
    began = time.perf_counter()
    done = await work
    return done, time.perf_counter() - began


async def collect(deltas: AsyncIterator[tuple[str, str | None, object]]) -> str:
    return "".join([delta async for delta, _, _ in deltas])


# ---- the same on the real server, over its socket


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    app = AppServer(tmp_path_factory.mktemp("engine-app")).start()
    yield app
    app.stop()


async def test_the_running_app_survives_its_engine_being_killed(server: AppServer) -> None:
    assert server.process is not None
    (engine,) = children(server.process.pid)  # llama.cpp is not in the web process
    victim, bystander = SocketUser(server.base), SocketUser(server.base)
    await victim.connect()
    await bystander.connect()
    try:
        await victim.say(LONG_STORY, **LONG_SETTINGS)
        await victim.wait_for(lambda: len(victim.named("stream_token")) >= 3)
        os.kill(engine, signal.SIGSTOP)  # mid-reply, whatever the machine
        os.kill(engine, signal.SIGKILL)
        await victim.wait_for(victim.errors)
        (error,) = victim.errors()
        assert "stopped in the middle of this reply" in error and "SIGKILL" in error
        assert server.process.poll() is None  # the app is up
        assert httpx.get(server.base + "/health", timeout=10).status_code == 200
        await victim.wait_for(victim.finished_replies)  # the partial reply, kept and sent

        # The next message, and another tab's, are answered by a new engine.
        await victim.say("Hello again.", max_tokens=8)
        await victim.wait_for(lambda: len(victim.finished_replies()) >= 2)
        await bystander.say("Hello!", max_tokens=8)
        await bystander.wait_for(bystander.finished_replies)
        assert bystander.errors() == [] and len(victim.errors()) == 1
        (restarted,) = children(server.process.pid)
        assert restarted != engine
    finally:
        await victim.client.disconnect()
        await bystander.client.disconnect()
