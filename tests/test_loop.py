"""The served app runs on uvloop, with asyncio's C tasks and futures, not nest_asyncio's
Python ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What `chainlit run app.py` does before its loop starts: import Chainlit's command line
# (which applies nest_asyncio), then the app. Then a loop doing what the server's does.
SERVED = """
import asyncio, _asyncio, sys
import chainlit.cli  # applies nest_asyncio, as `chainlit run` does
assert asyncio.Task is not _asyncio.Task and asyncio.Future is not _asyncio.Future

from chatllm.loop import use_native_tasks

async def too_late():
    try:
        use_native_tasks()
    except RuntimeError as exc:
        return str(exc)
    return "swapped while the loop ran"

refused = asyncio.run(too_late())
assert "before the event loop runs" in refused, refused
assert "uvloop" not in sys.modules  # nothing before the app imports it

import app  # noqa: F401  the app's own module, as Chainlit loads it

assert asyncio.Task is _asyncio.Task and asyncio.Future is _asyncio.Future
assert use_native_tasks() is False  # once is enough

async def work():
    import uvloop
    assert type(asyncio.get_running_loop()) is uvloop.Loop
    assert type(asyncio.current_task()) is _asyncio.Task
    assert type(asyncio.get_running_loop().create_future()) is _asyncio.Future
    queue = asyncio.Queue()
    async def put_later():
        await asyncio.sleep(0.01)
        await queue.put("token")
    results = await asyncio.gather(put_later(), queue.get(), asyncio.to_thread(sum, [1, 2]))
    assert results == [None, "token", 3]
    slow = asyncio.create_task(asyncio.sleep(10))
    try:
        async with asyncio.timeout(0.01):
            await slow
    except TimeoutError:
        pass
    assert slow.cancelled()
    return "served on C tasks, on uvloop"

print(asyncio.run(work()))

# Chainlit's constructors sleep 1 ms each (time.sleep: the loop stops): not in the app.
import time
from chainlit.context import init_http_context
from chainlit.message import Message
from chainlit.step import Step

slept = []
real_sleep = time.sleep
time.sleep = lambda seconds: (slept.append(seconds), real_sleep(seconds))[1]
async def construct():
    init_http_context()
    for _ in range(3):
        Message("a reply"), Step(name="on_message", type="run")

asyncio.run(construct())
assert slept == [], slept
time.sleep(0.002)  # a longer sleep is a sleep, wherever it is called
assert slept == [0.002], slept
print("no sleeps")
"""


# uvloop imported while nest_asyncio's Python Task is in place keeps making that one.
TOO_EARLY = """
import asyncio, _asyncio
import chainlit.cli  # applies nest_asyncio, as `chainlit run` does
import uvloop  # takes nest_asyncio's Python Task and Future as its own

import app  # noqa: F401

async def work():
    assert type(asyncio.get_running_loop()) is not uvloop.Loop
    assert type(asyncio.current_task()) is _asyncio.Task
    return "served on C tasks, on asyncio's loop"

print(asyncio.run(work()))
"""


def served(script: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLLM_", "CHAINLIT_"))}
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "CHATLLM_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_served_app_runs_on_uvloop_with_asyncio_s_c_tasks_and_futures(
    tmp_path: Path,
) -> None:
    done = served(SERVED, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "served on C tasks, on uvloop\nno sleeps" in done.stdout
    assert "The server's event loop is uvloop" in done.stdout


def test_a_uvloop_imported_too_early_is_left_for_asyncio_s_own_loop(tmp_path: Path) -> None:
    """It would run every task in nest_asyncio's Python Task."""
    done = served(TOO_EARLY, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("served on C tasks, on asyncio's loop")
    assert "the server keeps asyncio's own loop" in done.stdout
