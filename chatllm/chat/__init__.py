"""Everything Chainlit-facing, one job a module: `app` (start, resume, dispatch), `session`
(one chat's state), `panel` (settings, presets, commands), `replies` (a reply streamed and
stored; replay, regenerate, choose), `commands` (compare, export, import)."""

from chatllm.chat.app import ChatApp
from chatllm.chat.session import ChatSession

__all__ = ["ChatApp", "ChatSession"]
