"""The running app over its real socket, as the browser drives it: app.py's hooks, Chainlit's
own Stop event and its session persistence, end to end."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.support import LONG_SETTINGS, LONG_STORY, AppServer, SocketUser, children


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    app = AppServer(tmp_path_factory.mktemp("socket-app")).start()
    yield app
    app.stop()


def thread_replies(thread: dict[str, object]) -> list[dict[str, object]]:
    steps = thread["steps"]
    assert isinstance(steps, list)
    return [s for s in steps if (s.get("metadata") or {}).get("kind") == "reply"]


def replies(tab: SocketUser) -> list[dict[str, object]]:
    """The model's replies (not Chainlit's own notes, such as its stop notice)."""
    return [m for m in tab.finished_replies() if (m.get("metadata") or {}).get("kind")]


async def test_stop_then_resume_brings_back_the_partial_reply_memory_and_sliders(
    server: AppServer,
) -> None:
    tab = SocketUser(server.base)
    await tab.connect()
    try:
        await tab.say(LONG_STORY, **LONG_SETTINGS)
        await tab.wait_for(lambda: len(tab.named("stream_token")) >= 3)
        assert server.process is not None
        (engine,) = children(server.process.pid)
        os.kill(engine, signal.SIGSTOP)  # still mid-reply when Stop arrives, however busy
        try:
            await tab.client.emit("stop")  # the Stop button
            await tab.wait_for(
                lambda: [m for m in tab.named("new_message") if "stopped" in str(m["output"])]
            )
        finally:
            os.kill(engine, signal.SIGCONT)
        await tab.wait_for(lambda: replies(tab))  # the partial reply, sent whole at its end
        (partial,) = replies(tab)
        assert partial["output"]
        assert partial["metadata"]["finish_reason"] == "cancelled"  # type: ignore[index]
    finally:
        await tab.client.disconnect()

    # A new page on the same thread: Chainlit resumes it from the database.
    again = SocketUser(server.base, thread_id=tab.thread_id)
    await again.connect()
    try:
        (resumed,) = again.named("resume_thread")
        (stored,) = thread_replies(resumed)
        assert stored["output"] == partial["output"]
        panel = again.named("chat_settings")[-1]["data"]
        assert isinstance(panel, list)
        values = {w["id"]: w["initial"] for w in panel}
        assert (values["max_tokens"], values["seed"]) == (2000, "7")  # the sliders came back
        await again.say("Thank you.", max_tokens=8)
        await again.wait_for(lambda: replies(again))
        (reply,) = replies(again)
        # The model remembered the stopped reply: system, the story's exchange, the thanks.
        assert reply["metadata"]["receipt"]["prompt_messages"] == 4  # type: ignore[index]
    finally:
        await again.client.disconnect()
