"""Work a button starts, run as the chat's running task.

Chainlit runs a message as the session's current task, between `task_start` and
`task_end`: meanwhile the page shows Stop and holds its send button, and Stop cancels
that task. A button's callback runs inside an HTTP request instead, with neither: during
Regenerate or Replay there was no Stop, and a message sent meanwhile queued behind them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import chainlit as cl


async def as_chat_task(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` as the chat's running task, as Chainlit runs a message; a Stop ends it
    (what it wrote is kept by `work` itself, as a reply's is), and so does the request
    going away."""
    session = cl.context.session
    emitter = cl.context.emitter
    task = asyncio.create_task(work)
    session.current_task = task
    await emitter.task_start()
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if not task.cancelled() or (me is not None and me.cancelling()):
            raise  # not Stop: this request itself was cancelled
    finally:
        if session.current_task is task:
            session.current_task = None
        await emitter.task_end()
