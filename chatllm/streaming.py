"""The pieces of a streamed reply, shared by the backends and the local engine's client
(which loads before LangChain does: chatllm.chat.services)."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

QueueListener = Callable[[int], Awaitable[None]]

#: Set by whoever runs a turn to hear how many requests wait ahead of it on the local model
#: (called with 0 once generation starts). A context variable, so it reaches the chat model
#: through LangChain's runnables without widening their signatures.
queue_listener: contextvars.ContextVar[QueueListener | None] = contextvars.ContextVar(
    "queue_listener", default=None
)


UsageListener = Callable[["Usage"], None]

#: Set by whoever runs a reply to hear its token counts so far, where the model counts as
#: it goes (the local engine): a reply stopped midway then has its exact counts, which no
#: final chunk brings.
usage_listener: contextvars.ContextVar[UsageListener | None] = contextvars.ContextVar(
    "usage_listener", default=None
)


#: Hears a delta's token records: rows as bytes, and the new token ids' text pieces.
TokensListener = Callable[[bytes, dict[int, bytes]], None]

#: Set by whoever runs a reply to hear its tokens' records as they come (the local engine,
#: when asked for them: chatllm.engine.tokens), for the sampling X-ray.
tokens_listener: contextvars.ContextVar[TokensListener | None] = contextvars.ContextVar(
    "tokens_listener", default=None
)


@dataclass(frozen=True)
class Usage:
    """Tokens one generation took: the prompt as the model received it, and the reply."""

    prompt_tokens: int
    completion_tokens: int

    def as_metadata(self) -> dict[str, int]:
        """LangChain's `usage_metadata` form, as ChatOpenAI reports it too."""
        return {
            "input_tokens": self.prompt_tokens,
            "output_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


#: A piece of a streamed reply: its text, on the last piece why it ended, and its usage
#: (the local engine's: so far, on every piece; an endpoint's: on the last, if it sends it).
Delta = tuple[str, str | None, Usage | None]
