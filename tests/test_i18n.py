"""Our first users write Traditional and Simplified Chinese: every string exists in both."""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from chatllm.i18n import CATALOGUES, normalize, t
from tests.support import missing_glyphs


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


def test_every_character_the_app_shows_has_a_glyph_in_the_installed_fonts() -> None:
    """No empty boxes: the app's strings, its welcome pages and Chainlit's interface
    strings in the app's languages, against the fonts the tests' browser draws with (the
    welcome page's wave emoji had none)."""
    root = Path(__file__).resolve().parent.parent
    texts = [text for catalogue in CATALOGUES.values() for text in catalogue.values()]
    texts += [page.read_text("utf-8") for page in root.glob("chainlit*.md")]
    for language in ("en-US", "zh-TW", "zh-CN"):
        texts.append((root / ".chainlit" / "translations" / f"{language}.json").read_text("utf-8"))
    assert missing_glyphs("\n".join(texts)) == set()


@pytest.mark.parametrize("language", ["en", "zh-TW", "zh-CN"])
def test_a_receipt_and_an_export_name_settings_in_words_not_keys(language: str) -> None:
    """The receipt's table named the sliders by their keys (`max_tokens`) and why a reply
    ended by its code (`length`), and the Markdown export printed `builtin:creative`."""
    from chatllm.markdown import to_markdown
    from chatllm.receipts import Receipt
    from chatllm.sampling import Sampling
    from tests.test_transfer import broken

    sampling = Sampling(seed=1, system_prompt="Be brief.").model_dump()
    view = Receipt(backend="local", model="m", sampling=sampling, finish_reason="length").view(
        language
    )
    assert set(view["sampling_labels"]) == set(Sampling.model_fields)  # a new knob: named
    assert view["sampling_labels"]["max_tokens"] == t("max_tokens", language)
    assert view["finish_text"] == t("finish.length", language)

    document = broken("settings")
    document["thread"]["metadata"]["chat_settings"] = {
        "preset": "builtin:creative",
        "compare_with": ["builtin:code", "user:Mine", "custom"],
    }
    markdown = to_markdown(document, language)
    assert f"**{t('preset', language)}:** {t('preset.creative', language)}" in markdown
    (line,) = [
        x for x in markdown.splitlines() if x.startswith(f"- **{t('compare_with', language)}")
    ]
    assert line.endswith(f", Mine, {t('preset.custom', language)}")
    assert "builtin:" not in markdown
