"""The served app runs on asyncio's C tasks and futures, not nest_asyncio's Python ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What `chainlit run app.py` does before its loop starts: import Chainlit's command line
# (which applies nest_asyncio), then the app. Then a loop doing what the server's does.
SERVED = """
import asyncio, _asyncio
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

import app  # noqa: F401  the app's own module, as Chainlit loads it

assert asyncio.Task is _asyncio.Task and asyncio.Future is _asyncio.Future
assert use_native_tasks() is False  # once is enough

async def work():
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
    return "served on C tasks"

print(asyncio.run(work()))
"""


def test_the_served_app_runs_on_asyncio_s_c_tasks_and_futures(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLLM_", "CHAINLIT_"))}
    done = subprocess.run(
        [sys.executable, "-c", SERVED],
        cwd=ROOT,
        env={**env, "CHATLLM_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("served on C tasks")
