"""Named sampling presets: built-in ones, and those each user saves (stored per user).

A preset sets the sliders that shape sampling (PRESET_FIELDS: temperature, top_p, min_p,
top_k, the penalties, max new tokens, typical_p, mirostat); it leaves the seed and the
system prompt as they are.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from chatllm.errors import PresetNameMissing, PresetNameTooLong, PresetRefused
from chatllm.i18n import CATALOGUES, t
from chatllm.sampling import LLAMA_CPP_CHAIN, Sampling
from chatllm.store import Database
from chatllm.store.presets import PresetRows

PRESET_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "top_k",
    "repeat_penalty",
    "max_tokens",
    "typical_p",
    "presence_penalty",
    "frequency_penalty",
    "mirostat_mode",
    "mirostat_tau",
    "mirostat_eta",
)
#: Settings sets a comparison runs side by side: the current ones and up to three presets.
MIN_SETS = 2
MAX_SETS = 4
MAX_NAME = 60
MAX_PER_USER = 100

#: Built-in presets by key; their names are translated (i18n "preset.<key>").
BUILT_IN: dict[str, dict[str, Any]] = {
    key: {**LLAMA_CPP_CHAIN, **values}  # every value a preset holds: the rest put back
    for key, values in {
        "balanced": {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.1},
        # The original project's author found these best for a code assistant.
        "code": {"temperature": 0.4, "top_p": 0.5, "top_k": 40, "repeat_penalty": 1.1},
        "precise": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repeat_penalty": 1.0},
        "creative": {"temperature": 1.1, "top_p": 0.98, "top_k": 100, "repeat_penalty": 1.05},
    }.items()
}


@dataclass(frozen=True)
class Preset:
    """A named set of sampling values. `key` is "builtin:<name>" or "user:<name>"."""

    key: str
    label: str
    values: dict[str, Any]

    def apply(self, sampling: Sampling) -> Sampling:
        return sampling.update(self.values)

    def matches(self, sampling: Sampling) -> bool:
        """Whether `sampling` holds this preset's values."""
        return all(getattr(sampling, name) == value for name, value in self.values.items())

    @property
    def own_name(self) -> str:
        """The name a user's preset is stored under (its label may say more)."""
        return self.key.removeprefix("user:")


class ReservedName(PresetRefused):
    """A preset name the menu already shows for an entry of its own."""

    key = "preset.name.builtin"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name=name)


def folded(name: str) -> str:
    """A name as a person reads it: case, character width and spacing aside."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def _reserved_names() -> frozenset[str]:
    """The menu's own entries (Custom and the built-in presets) in every language, each
    also without its detail in brackets: "Code assistant (T 0.4, top_p 0.5)" is read as
    "Code assistant". The menu is keyed by what it shows, so a preset of one's own named
    like one of these replaced it there (and would be told from it by nobody)."""
    names: set[str] = set()
    for lang in CATALOGUES:
        for key in ("custom", *BUILT_IN):
            label = folded(t(f"preset.{key}", lang))  # NFKC makes "（" "("
            names |= {label, label.split("(", 1)[0].strip()}
    return frozenset(names)


RESERVED_NAMES = _reserved_names()


def is_reserved(name: str) -> bool:
    return folded(name) in RESERVED_NAMES


def values_of(sampling: Sampling) -> dict[str, Any]:
    """The part of `sampling` a preset holds."""
    return {name: getattr(sampling, name) for name in PRESET_FIELDS}


def builtin_presets(lang: str | None) -> list[Preset]:
    return [
        Preset(key=f"builtin:{key}", label=t(f"preset.{key}", lang), values=dict(values))
        for key, values in BUILT_IN.items()
    ]


def clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise PresetNameMissing()
    if len(name) > MAX_NAME:
        raise PresetNameTooLong(most=MAX_NAME)
    if is_reserved(name):
        raise ReservedName(name)
    return name


class Presets:
    """The presets each user is offered: the built-in ones, then their own."""

    def __init__(self, db: Database) -> None:
        self.rows = PresetRows(db)

    async def for_user(self, user_id: str | None, lang: str | None) -> list[Preset]:
        """The built-in presets, then the user's own by name. One saved under a built-in
        name (before such names were refused) is labelled as the user's, so that both
        stay in the menu."""
        presets = builtin_presets(lang)
        if user_id is None:
            return presets
        for name, values in await self.rows.for_user(user_id):
            label = t("preset.own", lang, name=name) if is_reserved(name) else name
            presets.append(Preset(key=f"user:{name}", label=label, values=values))
        return presets

    async def save(self, user_id: str, name: str, sampling: Sampling) -> Preset:
        """Save (or overwrite) the user's preset `name` with `sampling`'s values."""
        name = clean_name(name)
        values = values_of(sampling)
        await self.rows.save(user_id, name, values, MAX_PER_USER)
        return Preset(key=f"user:{name}", label=name, values=values)

    async def delete(self, user_id: str, name: str) -> bool:
        """Delete the user's preset `name`; whether there was one."""
        return await self.rows.delete(user_id, name)
