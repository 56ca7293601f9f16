"""Our first users write Traditional and Simplified Chinese: every string exists in both."""

from __future__ import annotations

import string

import pytest

from chatllm.i18n import CATALOGUES, normalize, t


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("language", ["zh-TW", "zh-CN"])
def test_every_string_is_translated_with_the_same_fields(language: str) -> None:
    english, other = CATALOGUES["en"], CATALOGUES[language]
    assert set(other) == set(english)
    for key, text in english.items():
        assert fields(other[key]) == fields(text), key


@pytest.mark.parametrize(
    ("tag", "catalogue"),
    [
        ("zh-TW", "zh-TW"),
        ("zh-Hant-TW", "zh-TW"),
        ("zh-HK", "zh-TW"),
        ("zh_tw", "zh-TW"),
        ("zh-CN", "zh-CN"),
        ("zh-Hans", "zh-CN"),
        ("zh", "zh-CN"),
        ("en-GB", "en"),
        ("fr", "en"),
        (None, "en"),
        ("", "en"),
    ],
)
def test_browser_languages_map_onto_a_catalogue(tag: str | None, catalogue: str) -> None:
    assert normalize(tag) == catalogue


def test_values_are_filled_in() -> None:
    assert t("queue.waiting", "zh-TW", ahead=2) == (
        "本機模型忙碌中，前面還有 2 個請求。輪到你時會立即開始回覆。"
    )
