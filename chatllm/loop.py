"""The web process's event loop: uvloop's, running asyncio's own tasks and futures, written
in C.

`chainlit run` applies nest_asyncio as it starts (chainlit/cli/__init__.py), so that a
user's code may call `cl.run_sync` on the loop's own thread: run the loop again from
inside one of its tasks. For that, nest_asyncio swaps asyncio's Task and Future, written
in C, for their pure-Python versions in the whole process (the C task refuses to start
while another task is running, which a nested run needs). Every task and future of the
server is then Python: each step of a task, each callback of a future, the awaits of every
streamed token and socket message.

This app never runs the loop inside itself: it calls no `run_sync` and Chainlit's own code
calls none. So before the server's loop starts (`app.py` is imported first) it puts the C
ones back. Under load that took 10 % off the CPU of each chat turn (bench/load.py, one
SQLite worker, runs alternating: 21.2-23.2 ms against 24.1-24.8 at 35 users, 27-29
against 32-39 at 25 in a slower hour of this shared machine). nest_asyncio's
re-entrant loop stays; only a nested run from inside a task would now fail, loudly
("Cannot enter into task … while another task … is being executed").

Then the loop itself is uvloop's (libuv, written in Cython) rather than asyncio's
selector loop in Python: each token a worker streams is a few turns of the loop (the
endpoint's chunk read, the socket write, the tasks woken between), and uvloop makes each
turn cheaper. bench/load.py, one SQLite worker, 10 users, runs alternating in pairs: the
worker's CPU per 40-token turn was 0.80-0.96× (median 0.87×) of the asyncio loop's,
35.8-44.2 ms against 39.7-54.2 in a slow hour of this shared machine. uvloop takes
asyncio's Task and Future as they are when it is first imported, so it is imported after
the C ones are back, and checked to make them.

Nothing in it sleeps either: Chainlit's Message and Step constructors call
`time.sleep(0.001)` (for distinct creation times, Literal AI's ordering), which stops the
whole loop, every user's stream with it, for 1.1 ms each: three times a chat turn (the
user's message, the `on_message` run step, the reply), 7-11 % of a loaded worker's
samples under py-spy. The app's store orders a thread's steps by creation time and then
by the order they were written, so equal times keep their order.

Both together, against the code before them (bench/load.py, one SQLite worker, 25 users,
3 pairs of runs alternating): added time to first token p95 120-197 ms against 211-303,
each token's p95 26-57 ms against 78-193, 21.4-23.8 turns/s against 18.5-21.5, and
37.6-41.7 ms of CPU per turn against 39.8-44.4 (a slow day: 21 ms in a quiet hour).
"""

from __future__ import annotations

import asyncio
import asyncio.futures
import asyncio.tasks
import importlib
import logging
import time
from typing import Any

log = logging.getLogger("chatllm")


def use_native_tasks() -> bool:
    """asyncio's C Task and Future for every task and future made from now on, if
    nest_asyncio had swapped them for the Python ones; whether it had. Call it before the
    event loop runs."""
    try:
        import _asyncio
    except ImportError:  # an interpreter without the C accelerator: nothing to put back
        return False
    if asyncio.tasks.Task is _asyncio.Task and asyncio.futures.Future is _asyncio.Future:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("asyncio's tasks can only be swapped before the event loop runs")
    asyncio.Task = asyncio.tasks.Task = asyncio.tasks._CTask = _asyncio.Task  # type: ignore[attr-defined,misc]
    asyncio.Future = asyncio.futures.Future = asyncio.futures._CFuture = _asyncio.Future  # type: ignore[attr-defined,misc]
    # nest_asyncio's Python versions keep the same map of each loop's current task; the C
    # tasks keep it themselves, and these are what asyncio's own Python code calls.
    asyncio.tasks._enter_task = _asyncio._enter_task
    asyncio.tasks._leave_task = _asyncio._leave_task
    log.info("asyncio's C tasks and futures are back (nest_asyncio had swapped them)")
    return True


def serve_on_uvloop() -> bool:
    """Make the loop that `chainlit run` is about to run uvloop's, with asyncio's C tasks
    and futures; whether it did. Call it before the event loop runs, after
    `use_native_tasks`. Without uvloop (it has no Windows build), or where it would make
    other tasks than the C ones, the server keeps asyncio's own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("the server's loop can only be chosen before the event loop runs")
    try:
        import uvloop
    except ImportError:
        return False
    policy = asyncio.get_event_loop_policy()
    if isinstance(policy, uvloop.EventLoopPolicy):
        return False
    loop = uvloop.new_event_loop()
    made = loop.run_until_complete(_kinds())
    wanted = (asyncio.tasks.Task, asyncio.futures.Future)
    if made != wanted:  # uvloop was imported while nest_asyncio's Python ones were in place
        loop.close()
        log.warning("uvloop makes %s, not %s: the server keeps asyncio's own loop", made, wanted)
        return False
    # `chainlit run` starts its server with asyncio.run, which nest_asyncio makes run the
    # thread's current loop (without nest_asyncio it would ask the policy for a new one).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(loop)
    log.info("The server's event loop is uvloop's")
    return True


async def _kinds() -> tuple[type, type]:
    task = asyncio.current_task()
    assert task is not None
    return type(task), type(asyncio.get_running_loop().create_future())


def prepare_server_loop() -> None:
    """asyncio's C tasks and futures, on uvloop's loop that nothing stops with a sleep, for
    the server `chainlit run` is about to start (`app.py` is imported before it does)."""
    use_native_tasks()
    serve_on_uvloop()
    no_blocking_sleeps()


class _WithoutShortSleeps:
    """The `time` module, but a sleep of a millisecond or less returns at once."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds > 0.001:
            time.sleep(seconds)


def no_blocking_sleeps() -> bool:
    """Chainlit's Message and Step constructors no longer stop the loop for their 1 ms
    sleep; whether they had still to be changed."""
    changed = False
    # by name: `chainlit.step` is also the name of Chainlit's step decorator
    for module in map(importlib.import_module, ("chainlit.message", "chainlit.step")):
        if getattr(module, "time", None) is time:
            module.time = _WithoutShortSleeps()  # type: ignore[attr-defined]
            changed = True
    return changed
