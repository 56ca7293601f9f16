"""What every backend shares: the `Backend` interface and its registry, `Backends` (those a
configuration enables), the profile a chat runs on, and the pieces of a streamed reply.

Backends register themselves in `BACKENDS`; callers ask `Backends` for one by name and never
import a backend class. A backend's chat model raises only `chatllm.errors.BackendError`s.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from chatllm.config import Settings
from chatllm.errors import BackendError, ChatLLMError, UnknownModel
from chatllm.sampling import SEED_MAX, Sampling
from chatllm.streaming import Delta as Delta
from chatllm.streaming import QueueListener as QueueListener
from chatllm.streaming import Usage as Usage
from chatllm.streaming import queue_listener as queue_listener

# Tokens a chat template adds around each message (role markers, separators). Counted on
# top of the content so that trimming errs on the side of room for the reply.
TEMPLATE_TOKENS_PER_MESSAGE = 8


def draw_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


@dataclass(frozen=True)
class ProfileSpec:
    """One choice in the chat-profile menu: a backend and a model it serves."""

    backend: str
    model: str

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    @classmethod
    def parse(cls, name: str) -> ProfileSpec:
        backend, _, model = name.partition(":")
        return cls(backend=backend, model=model)


TokensMissing = Literal["off", "refused", "ignored"]


class Backend(ABC):
    """A source of chat models. Subclasses register with `@register`."""

    #: What profiles and receipts call this backend ("local", "openai").
    name: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        """Whether these settings turn this backend on."""
        return True

    @abstractmethod
    async def models(self) -> list[str]:
        """The models this backend offers now."""

    async def ensure_model(self, model: str) -> None:
        """Raise `UnknownModel` if this backend does not serve `model`."""
        if model not in await self.models():
            raise UnknownModel(model=model)

    @abstractmethod
    def chat_model(self, model: str, sampling: Sampling) -> BaseChatModel:
        """A chat model that replies with `sampling`'s values."""

    #: Where its token records' ids come from (chatllm.xray.records.IdSource): the
    #: model's vocabulary, or the texts an endpoint sends.
    token_ids = "model"

    def record_top(self, model: str) -> int:
        """Candidates `model`'s chat models record with each token (the sampling X-ray's);
        0 where they record none."""
        return 0

    def why_no_records(self, model: str) -> TokensMissing:
        """Why a reply of `model` has no token records: "off" (not asked for), or, for an
        endpoint that was asked, "refused" (it answered the request with an error) or
        "ignored" (it answered without them): told once, not asked again."""
        return "off"

    def not_sent(self, sampling: Sampling) -> list[str]:
        """The sampling values `chat_model` does not pass on to the model (they shape no
        reply; the receipt says so). All of them go to most backends."""
        return []

    @abstractmethod
    def context_tokens(self, model: str) -> int:
        """How many tokens the model's context holds, prompt and reply together."""

    @abstractmethod
    def count_tokens(self, messages: Sequence[BaseMessage]) -> int:
        """Tokens `messages` take in the prompt, template overhead included."""

    async def prepare_counts(self, messages: Sequence[BaseMessage]) -> None:
        """Get ready to count `messages` without blocking (the chain calls this before
        trimming, whose counting is synchronous). Nothing to do for most backends."""
        return None

    @abstractmethod
    def count_text(self, text: str) -> int:
        """Tokens `text` takes (for a reply whose usage the model did not report)."""


BACKENDS: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    BACKENDS[cls.name] = cls
    return cls


class Backends:
    """The backends this configuration enables, by name."""

    def __init__(self, settings: Settings) -> None:
        self._by_name: dict[str, Backend] = {
            name: cls(settings) for name, cls in BACKENDS.items() if cls.enabled(settings)
        }

    def get(self, name: str) -> Backend:
        try:
            return self._by_name[name]
        except KeyError:
            raise BackendError(f"The backend {name!r} is not configured.") from None

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._by_name.values())

    async def profiles(self) -> tuple[list[ProfileSpec], list[ChatLLMError]]:
        """Every (backend, model) choice, and the errors of backends that could not list theirs."""
        specs: list[ProfileSpec] = []
        problems: list[ChatLLMError] = []
        for backend in self:
            try:
                specs.extend(ProfileSpec(backend.name, model) for model in await backend.models())
            except BackendError as exc:
                problems.append(exc)
        return specs, problems
