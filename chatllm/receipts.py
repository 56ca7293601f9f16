"""Generation receipts: what made a reply (backend, model, every sampling value, the seed),
what it cost (tokens) and how fast it came. Stored with each reply, shown under it, exported.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages import BaseMessage
from pydantic import BaseModel, ConfigDict, Field, model_validator

from chatllm.clock import utc_now
from chatllm.i18n import CATALOGUES, t
from chatllm.sampling import LLAMA_CPP_CHAIN

log = logging.getLogger("chatllm")

#: Where a reply step keeps its receipt, in the step's metadata.
RECEIPT = "receipt"

#: The sampling values a receipt names, each by its slider's label.
SAMPLING_LABELS = (
    "temperature",
    "top_p",
    "min_p",
    "top_k",
    "repeat_penalty",
    "max_tokens",
    "seed",
    "system_prompt",
    "typical_p",
    "presence_penalty",
    "frequency_penalty",
    "mirostat_mode",
    "mirostat_tau",
    "mirostat_eta",
)

RECEIPT_LABELS = (
    "backend",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "ttft",
    "speed",
    "duration",
    "queued",
    "finish",
    "created",
    "toggle",
)

Finish = Literal["stop", "length", "cancelled", "error"]


def prompt_digest(messages: Sequence[BaseMessage]) -> str:
    """A fingerprint of exactly what the model received (roles and texts, after trimming);
    replaying a reply is exact only when the replay's prompt has the same one."""
    payload = json.dumps([[m.type, m.text] for m in messages], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class Receipt(BaseModel):
    """The record of one generation."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    backend: str
    model: str
    #: Every sampling value the reply was made with, the seed actually used and the system
    #: prompt included (`Sampling.model_dump()`).
    sampling: dict[str, Any]
    finish_reason: Finish
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: True when the backend reported no usage and the counts were estimated here.
    tokens_estimated: bool = False
    #: Messages the model received after trimming to its context: system, history, message.
    prompt_messages: int = 0
    prompt_digest: str | None = None
    #: Time to first token, from the moment the model took the request (waiting in line for
    #: the local model is `queued_ms`, not counted here).
    ttft_ms: float | None = None
    queued_ms: float = 0.0
    #: Reply tokens after the first, over the time after the first; what a reader perceives.
    tokens_per_second: float | None = None
    duration_ms: float | None = None
    error: str | None = None
    created_at: str = Field(default_factory=utc_now)
    #: Sampling values the reply's backend was not sent (an endpoint's extras, when the
    #: operator keeps them home): they did not shape it, whatever `sampling` says.
    not_sent: list[str] = Field(default_factory=list)
    #: Whether each token's probabilities were recorded (the sampling X-ray's), else why
    #: not: "off" (not asked), "refused" / "ignored" (an endpoint's answer); None: a
    #: receipt older than the X-ray.
    token_records: Literal["recorded", "off", "refused", "ignored"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_local_receipt(cls, data: Any) -> Any:
        # A local receipt made before these were settings: read with the values that
        # shaped its reply. Not an endpoint's: those were never sent there.
        if not isinstance(data, Mapping) or data.get("backend") != "local":
            return data
        sampling = data.get("sampling")
        if not isinstance(sampling, Mapping) or LLAMA_CPP_CHAIN.keys() <= sampling.keys():
            return data
        return {**data, "sampling": {**LLAMA_CPP_CHAIN, **sampling}}

    @property
    def seed(self) -> int | None:
        seed = self.sampling.get("seed")
        return seed if isinstance(seed, int) else None

    def summary(self, lang: str | None = None) -> str:
        """One compact line for under a reply or in an export."""
        s = self.sampling
        parts = [
            f"{self.backend_text(lang)} · {self.model}",
            t(
                "receipt.sampling",
                lang,
                **{key: _num(s.get(key)) for key in SAMPLING_LABELS if key != "system_prompt"},
            ),
        ]
        approx = "≈" if self.tokens_estimated else ""
        parts.append(
            t(
                "receipt.tokens",
                lang,
                prompt=f"{approx}{_num(self.prompt_tokens)}",
                completion=f"{approx}{_num(self.completion_tokens)}",
            )
        )
        if self.ttft_ms is not None:
            parts.append(t("receipt.ttft", lang, ms=f"{self.ttft_ms:.0f}"))
        if self.tokens_per_second is not None:
            parts.append(t("receipt.speed", lang, rate=f"{self.tokens_per_second:.1f}"))
        parts.append(t(f"finish.{self.finish_reason}", lang))
        if self.token_records in ("refused", "ignored"):
            parts.append(t(f"receipt.no_records.{self.token_records}", lang))
        return " · ".join(parts)

    def backend_text(self, lang: str | None = None) -> str:
        """The backend in the user's language ("本機" for local)."""
        key = f"receipt.backend.{self.backend}"
        return t(key, lang) if key in CATALOGUES["en"] else self.backend

    def view(self, lang: str | None = None, title: str | None = None) -> dict[str, Any]:
        """Props for the `Receipt` custom element (public/elements/Receipt.jsx)."""
        return {
            "title": title,
            "summary": self.summary(lang),
            "receipt": self.model_dump(mode="json"),
            "labels": {key: t(f"receipt.label.{key}", lang) for key in RECEIPT_LABELS},
            # The sliders' own names and the words for why it ended, as the summary says
            # them: the table showed `max_tokens` and `length`.
            "sampling_labels": {key: t(key, lang) for key in SAMPLING_LABELS},
            "not_sent_text": t("receipt.not_sent", lang),
            "finish_text": t(f"finish.{self.finish_reason}", lang),
            "backend_text": self.backend_text(lang),
        }


def receipt_of(metadata: Mapping[str, Any] | None) -> Receipt | None:
    """The receipt stored in a step's metadata, if it has a readable one."""
    raw = (metadata or {}).get(RECEIPT)
    if not isinstance(raw, Mapping):
        return None
    try:
        return Receipt.model_validate(raw)
    except ValueError:  # shown without its receipt, and said in the log
        log.warning("A stored receipt could not be read", exc_info=True)
        return None


def _num(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
