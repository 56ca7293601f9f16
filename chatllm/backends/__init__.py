"""The model backends: each turns a model name and slider values into a LangChain chat
model. `base` holds what they share; importing this package registers `local` (llama.cpp in
a process of its own) and `openai` (any OpenAI-compatible endpoint)."""

from chatllm.backends import local, openai
from chatllm.backends.base import (
    BACKENDS,
    TEMPLATE_TOKENS_PER_MESSAGE,
    Backend,
    Backends,
    Delta,
    ProfileSpec,
    QueueListener,
    Usage,
    draw_seed,
    queue_listener,
    register,
)

__all__ = [
    "BACKENDS",
    "TEMPLATE_TOKENS_PER_MESSAGE",
    "Backend",
    "Backends",
    "Delta",
    "ProfileSpec",
    "QueueListener",
    "Usage",
    "draw_seed",
    "local",
    "openai",
    "queue_listener",
    "register",
]
