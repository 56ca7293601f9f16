"""Starters: the prompts a new chat offers under its welcome, one click each — a presenter's
run-sheet. Each may set a preset first, or compare the reply under several presets.

The app's own show it off in en, zh-TW and zh-CN (a code question under the Code
assistant preset, a question in Chinese, a comparison, one on sampling itself). An
operator replaces them with `starters.json` in the data directory, read and checked at
start-up (a malformed file stops the app, saying what is wrong and where):

    {"starters": [
      {"label": {"en": "Plan a trip", "zh-TW": "規劃旅行"},
       "message": {"en": "Plan a day in Taipei.", "zh-TW": "規劃台北一日遊。"},
       "preset": "creative",                 # optional: a built-in preset, set first
       "compare_with": ["precise"],          # optional: compare under these presets
       "profiles": ["local"],                # optional: only these backends or profiles
       "icon": "/public/trip.svg"}           # optional: a file under public/
    ]}

A text is one string for every language, or one per language ("en" required; zh-TW and
zh-CN fall back to it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chatllm.errors import ConfigError
from chatllm.i18n import CATALOGUES, normalize, t
from chatllm.presets import BUILT_IN, MAX_SETS

FILE_NAME = "starters.json"
MAX_STARTERS = 8
MAX_TEXT = 2000

Text = Annotated[str | dict[str, str], Field(union_mode="left_to_right")]


def _text(value: Text, what: str, most: int) -> Text:
    texts = {"en": value} if isinstance(value, str) else value
    unknown = sorted(set(texts) - set(CATALOGUES))
    if unknown:
        raise ValueError(f"languages {', '.join(unknown)} are not en, zh-TW or zh-CN")
    if "en" not in texts:
        raise ValueError(f"the {what} needs an English (en) text, which others fall back to")
    for lang, text in texts.items():
        if not text.strip():
            raise ValueError(f"the {what} in {lang} is empty")
        if len(text) > most:
            raise ValueError(f"the {what} in {lang} is longer than {most} characters")
    return value


def _preset(name: str) -> str:
    key = name.removeprefix("builtin:")
    if key not in BUILT_IN:
        raise ValueError(f"{name!r} is not a built-in preset ({', '.join(BUILT_IN)})")
    return key


class Starter(BaseModel):
    """One starter, as the file or the app's defaults give it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: Text
    message: Text
    #: A built-in preset's key ("code"), set before the message is answered.
    preset: str | None = None
    #: Built-in presets the reply is compared under, beside the current settings.
    compare_with: tuple[str, ...] = ()
    #: Backends ("local", "openai") or profiles ("local:SmolLM2-…") offering it; none: all.
    profiles: tuple[str, ...] = ()
    icon: str | None = None

    @field_validator("label")
    @classmethod
    def _label(cls, value: Text) -> Text:
        return _text(value, "label", 80)

    @field_validator("message")
    @classmethod
    def _message(cls, value: Text) -> Text:
        return _text(value, "message", MAX_TEXT)

    @field_validator("preset")
    @classmethod
    def _one_preset(cls, value: str | None) -> str | None:
        return None if value is None else _preset(value)

    @field_validator("compare_with")
    @classmethod
    def _presets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_SETS - 1:
            raise ValueError(f"a comparison takes at most {MAX_SETS - 1} presets")
        return tuple(_preset(name) for name in value)

    @field_validator("icon")
    @classmethod
    def _icon(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("/public/") and ".." not in value):
            raise ValueError("an icon is a file under public/, named /public/<file>")
        return value

    def text(self, field: Literal["label", "message"], lang: str | None) -> str:
        value: Text = self.label if field == "label" else self.message
        if isinstance(value, str):
            return value
        return value.get(normalize(lang)) or value["en"]

    def command(self, lang: str | None) -> str | None:
        """The command its message is sent with (Chainlit's starters carry one, which the
        message shows): Compare for a comparison, the preset's name for a preset; none."""
        if self.compare_with:
            return t("command.compare.name", lang)
        if self.preset:
            return t(f"preset.{self.preset}", lang)
        return None

    def offered_on(self, backend: str, profile: str) -> bool:
        return not self.profiles or backend in self.profiles or profile in self.profiles


class StarterFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    starters: list[Starter] = Field(max_length=MAX_STARTERS)


def _default(key: str, **settings: Any) -> Starter:
    def texts(field: str) -> dict[str, str]:
        return {lang: t(f"starter.{key}.{field}", lang) for lang in CATALOGUES}

    return Starter(label=texts("label"), message=texts("message"), **settings)


def defaults() -> list[Starter]:
    """The app's own: what a presenter would show first."""
    return [
        _default("code", preset="code"),
        _default("chinese"),
        _default("compare", compare_with=("precise", "creative")),
        _default("sampling"),
    ]


class Starters:
    """The starters this install offers: the operator's file, else the app's own."""

    def __init__(self, starters: list[Starter]) -> None:
        self.all = starters

    @classmethod
    def load(cls, data_dir: Path) -> Starters:
        """The data directory's starters.json if there is one (ConfigError, saying what is
        wrong and where, if it is malformed), else the defaults."""
        path = data_dir / FILE_NAME
        if not path.exists():
            return cls(defaults())
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} could not be read: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path} is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
            ) from exc
        try:
            parsed = StarterFile.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'the file'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ConfigError(
                f"{path} is malformed: {problems}. Its format is in the README (Starters)."
            ) from exc
        return cls(parsed.starters)

    def offered(self, backend: str, profile: str) -> list[Starter]:
        return [s for s in self.all if s.offered_on(backend, profile)]

    def find(self, command: str | None, message: str) -> Starter | None:
        """The starter a message was sent by: its text and command, in any language (the
        page sends the starter's text with its command; one typed the same way does the
        same)."""
        if not command:
            return None
        for starter in self.all:
            for lang in CATALOGUES:
                if starter.command(lang) == command and starter.text("message", lang) == message:
                    return starter
        return None
