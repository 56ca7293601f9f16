"""The web process's event loop runs asyncio's own tasks and futures, written in C.

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
"""

from __future__ import annotations

import asyncio
import asyncio.futures
import asyncio.tasks
import logging

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
