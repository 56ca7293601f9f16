"""The sampling values as one validated model; the sliders are derived from it.

A new knob is added here, once: its bounds, its default and its step make its widget in
the settings panel (chatllm.chat.panel), and every receipt records it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from chatllm.errors import InvalidSampling, Problem

log = logging.getLogger("chatllm")

SEED_MAX = 2**31 - 1
#: The catalogue's words for a refused seed (chatllm.i18n), in every language.
SEED_PROBLEM = "settings.problem.seed"


class Sampling(BaseModel):
    """Values that shape the next reply. Unknown keys and out-of-range values are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    temperature: float = Field(default=0.7, ge=0.0, le=2.0, json_schema_extra={"step": 0.05})
    top_p: float = Field(default=0.95, ge=0.0, le=1.0, json_schema_extra={"step": 0.01})
    # llama-cpp-python's own default, which shaped every local reply before it was a
    # setting (receipts without it are read so: chatllm.receipts).
    min_p: float = Field(default=0.05, ge=0.0, le=1.0, json_schema_extra={"step": 0.01})
    max_tokens: int = Field(default=512, ge=1, le=4096, json_schema_extra={"step": 1})
    top_k: int = Field(default=40, ge=0, le=200, json_schema_extra={"step": 1})
    repeat_penalty: float = Field(default=1.1, ge=1.0, le=2.0, json_schema_extra={"step": 0.01})
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    system_prompt: str = Field(default="You are a helpful assistant.", max_length=8000)
    # The panel's Advanced tab (ADVANCED): each does nothing at its default.
    typical_p: float = Field(
        default=1.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.01, "advanced": True}
    )
    presence_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, json_schema_extra={"step": 0.05, "advanced": True}
    )
    frequency_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, json_schema_extra={"step": 0.05, "advanced": True}
    )
    #: 0 off; 1 or 2 replace top_k, typical_p, top_p and min_p (llama.cpp's chain)
    mirostat_mode: int = Field(
        default=0, ge=0, le=2, json_schema_extra={"step": 1, "advanced": True}
    )
    mirostat_tau: float = Field(
        default=5.0, ge=0.0, le=10.0, json_schema_extra={"step": 0.1, "advanced": True}
    )
    mirostat_eta: float = Field(
        default=0.1, ge=0.0, le=1.0, json_schema_extra={"step": 0.01, "advanced": True}
    )

    @field_validator(
        "temperature",
        "top_p",
        "min_p",
        "repeat_penalty",
        "typical_p",
        "presence_penalty",
        "frequency_penalty",
        "mirostat_tau",
        "mirostat_eta",
        mode="before",
    )
    @classmethod
    def _real_number(cls, value: Any) -> Any:
        # Sliders send JSON numbers; text, bools (True would read as 1.0), NaN and ∞ are not.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("max_tokens", "top_k", "mirostat_mode", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a whole number")
        if isinstance(value, float) and value.is_integer():
            return int(value)  # sliders send 512.0
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_from_text(cls, value: Any) -> Any:
        # The panel sends text; whatever is refused, the words say the range it may take.
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        number: int | None = None
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,20}", value.strip()):
            number = int(value.strip())
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        if number is None or not 0 <= number <= SEED_MAX:
            raise PydanticCustomError(SEED_PROBLEM, "not a seed")  # words: _problem
        return number

    def update(self, changes: Mapping[str, Any]) -> Sampling:
        """A copy with `changes` applied, validated as a whole; raises InvalidSampling."""
        return parse_sampling({**self.model_dump(), **changes})

    def restore(self, saved: Mapping[str, Any]) -> Sampling:
        """These values with those saved in a thread applied; a saved value that no longer
        validates (bounds changed since) is skipped, keeping the rest."""
        try:
            return self.update(saved)
        except InvalidSampling:
            restored = self
            for name, value in saved.items():
                try:
                    restored = restored.update({name: value})
                except InvalidSampling as exc:
                    log.warning("Ignoring a saved setting: %s", exc)
            return restored

    def generation_params(self) -> dict[str, Any]:
        """The values a model call takes (everything but the system prompt)."""
        return self.model_dump(exclude={"system_prompt"})

    def as_settings(self) -> dict[str, Any]:
        """The values as the settings panel holds them (the seed as text)."""
        values = self.model_dump()
        values["seed"] = "" if self.seed is None else str(self.seed)
        return values

    @classmethod
    def slider(cls, name: str) -> tuple[float, float, float]:
        """(lowest, highest, step) of the numeric value `name`, for its slider."""
        field = cls.model_fields[name]
        low, high = _bounds(field.metadata)
        extra = field.json_schema_extra
        step = extra["step"] if isinstance(extra, dict) else 1
        return low, high, float(step)  # type: ignore[arg-type]


#: The rest of llama.cpp's chain as llama-cpp-python leaves it when not sent: what shaped
#: every local reply before these were settings (chatllm.receipts reads old receipts so),
#: and what a built-in preset puts back (chatllm.presets). Fixed: not the sliders' defaults.
LLAMA_CPP_CHAIN: dict[str, float | int] = {
    "min_p": 0.05,
    "typical_p": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "mirostat_mode": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
}

#: The values the settings panel shows on its Advanced tab.
ADVANCED: tuple[str, ...] = tuple(
    name
    for name, field in Sampling.model_fields.items()
    if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("advanced")
)

#: The numeric values (every one but the system prompt): those a sweep can vary.
NUMERIC_FIELDS: tuple[str, ...] = tuple(
    name for name, field in Sampling.model_fields.items() if field.annotation is not str
)


def option_name(name: str) -> str:
    """The command-line option of a sampling value: top_p → --top-p."""
    return "--" + name.replace("_", "-")


def _bounds(metadata: list[Any]) -> tuple[float, float]:
    low = next(m.ge for m in metadata if hasattr(m, "ge"))
    high = next(m.le for m in metadata if hasattr(m, "le"))
    return float(low), float(high)


def parse_sampling(raw: Mapping[str, Any]) -> Sampling:
    """Validate values from the settings panel; every problem is named in the error, in
    the catalogue's words (what the value may be), never pydantic's English."""
    try:
        return Sampling.model_validate(dict(raw))
    except ValidationError as exc:
        problems: list[str] = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            problems.append(_problem(name, error["type"]))
        raise InvalidSampling(problems) from exc


def _problem(name: str, kind: str) -> Problem:
    """What a refused value of `name` may be instead (its bounds from the model)."""
    if kind == "extra_forbidden" or name not in Sampling.model_fields:
        return Problem("settings.problem.unknown", setting=name)
    if name == "seed":
        return Problem(SEED_PROBLEM, setting=name, low=0, high=SEED_MAX)
    field = Sampling.model_fields[name]
    if field.annotation is str:
        most = next(m.max_length for m in field.metadata if hasattr(m, "max_length"))
        return Problem("settings.problem.text", setting=name, most=most)
    low, high = _bounds(field.metadata)
    whole = field.annotation is int
    return Problem(
        "settings.problem.whole" if whole else "settings.problem.number",
        setting=name,
        low=f"{low:g}",
        high=f"{high:g}",
    )
