"""Everything Chainlit-facing, one job a module: `services` (what the app needs before its
first page; it loads the rest), `app` (start, resume, dispatch), `session` (one chat's
state), `panel` (settings, presets, commands), `replies` (a reply streamed and stored;
replay, regenerate, choose), `commands` (compare, export, import), `sharing` (share
links), `actions` (the buttons' names).

`ChatApp` and `ChatSession` are imported on first use: app.py imports this package before
the server starts, and they bring LangChain and the backends (about 1.5 s).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatllm.chat.app import ChatApp
    from chatllm.chat.session import ChatSession

__all__ = ["ChatApp", "ChatSession"]


def __getattr__(name: str) -> Any:
    if name == "ChatApp":
        from chatllm.chat.app import ChatApp

        return ChatApp
    if name == "ChatSession":
        from chatllm.chat.session import ChatSession

        return ChatSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
