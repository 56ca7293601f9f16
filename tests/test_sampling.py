"""Sliders: one validated model; bad values are refused and the old ones kept."""

from __future__ import annotations

import math
import re

import pytest
from chainlit.input_widget import Slider, TextInput
from pydantic import ValidationError

from chatllm.chat.panel import sampling_widgets
from chatllm.errors import InvalidSampling, describe
from chatllm.sampling import Sampling, parse_sampling


def test_defaults_are_within_their_own_bounds() -> None:
    assert parse_sampling(Sampling().model_dump()) == Sampling()


def test_sliders_carry_the_models_bounds_and_current_values() -> None:
    sampling = Sampling(temperature=0.4, top_p=0.5, seed=7)
    widgets = {w.id: w for w in sampling_widgets(sampling)}
    assert set(widgets) == set(Sampling.model_fields)
    temperature = widgets["temperature"]
    assert isinstance(temperature, Slider)
    assert (temperature.min, temperature.max, temperature.initial) == (0.0, 2.0, 0.4)
    top_p = widgets["top_p"]
    assert isinstance(top_p, Slider)
    assert (top_p.min, top_p.max, top_p.initial) == (0.0, 1.0, 0.5)
    assert isinstance(widgets["seed"], TextInput)
    assert widgets["seed"].initial == "7"
    assert isinstance(widgets["max_tokens"], Slider) and widgets["max_tokens"].step == 1


def test_slider_labels_follow_the_browser_language() -> None:
    labels = {w.id: w.label for w in sampling_widgets(Sampling(), "zh-TW")}
    assert labels["temperature"] == "溫度"
    labels = {w.id: w.label for w in sampling_widgets(Sampling(), "zh-CN")}
    assert labels["temperature"] == "温度"


def test_a_change_applies_only_the_changed_values() -> None:
    updated = Sampling().update({"temperature": 1.3, "top_p": 0.9})
    assert (updated.temperature, updated.top_p) == (1.3, 0.9)
    assert updated.max_tokens == Sampling().max_tokens


def test_slider_floats_for_whole_numbers_are_accepted() -> None:
    assert Sampling().update({"max_tokens": 256.0, "top_k": 10.0}).max_tokens == 256


def test_empty_seed_means_random_and_digits_mean_fixed() -> None:
    assert Sampling().update({"seed": ""}).seed is None
    assert Sampling().update({"seed": "  42 "}).seed == 42
    assert Sampling().update({"seed": 42}).seed == 42


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.01}, "top_p"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"top_p": b"0.5"}, "top_p"),
        ({"max_tokens": "1_000"}, "max_tokens"),
        ({"temperature": None}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": [0.5]}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 12.5}, "max_tokens"),
        ({"top_k": -1}, "top_k"),
        ({"repeat_penalty": 0.5}, "repeat_penalty"),
        ({"seed": "abc"}, "seed"),
        ({"seed": "-3"}, "seed"),
        ({"seed": "²"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),  # pydantic alone would read it as 1
        ({"seed": 2**40}, "seed"),
        ({"system_prompt": "x" * 9000}, "system_prompt"),
        ({"system_prompt": 5}, "system_prompt"),
        ({"tfs_z": 0.1}, "tfs_z"),  # llama-cpp-python takes it and ignores it
        ({"min_p": 1.5}, "min_p"),
        ({"typical_p": -0.1}, "typical_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": "1"}, "frequency_penalty"),
        ({"mirostat_mode": 3}, "mirostat_mode"),
        ({"mirostat_mode": 1.5}, "mirostat_mode"),
        ({"mirostat_tau": math.inf}, "mirostat_tau"),
    ],
)
def test_out_of_range_or_malformed_values_are_refused_by_name(
    changes: dict[str, object], named: str
) -> None:
    with pytest.raises(InvalidSampling) as refused:
        Sampling().update(changes)
    assert any(problem.startswith(named) for problem in refused.value.problems), (
        refused.value.problems
    )


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidSampling) as refused:
        Sampling().update({"temperature": 9, "top_p": -1})
    assert len(refused.value.problems) == 2


#: Each slider as the settings panel offers it: default, lowest, highest, step.
SLIDERS = {
    "temperature": (0.7, 0.0, 2.0, 0.05),
    "top_p": (0.95, 0.0, 1.0, 0.01),
    "max_tokens": (512, 1, 4096, 1),
    "top_k": (40, 0, 200, 1),
    "repeat_penalty": (1.1, 1.0, 2.0, 0.01),
    "min_p": (0.05, 0.0, 1.0, 0.01),
    "typical_p": (1.0, 0.0, 1.0, 0.01),
    "presence_penalty": (0.0, -2.0, 2.0, 0.05),
    "frequency_penalty": (0.0, -2.0, 2.0, 0.05),
    "mirostat_mode": (0, 0, 2, 1),
    "mirostat_tau": (5.0, 0.0, 10.0, 0.1),
    "mirostat_eta": (0.1, 0.0, 1.0, 0.01),
}


@pytest.mark.parametrize("name", sorted(SLIDERS))
def test_each_slider_offers_its_range_and_accepts_its_ends_only(name: str) -> None:
    default, low, high, step = SLIDERS[name]
    (slider,) = [w for w in sampling_widgets(Sampling()) if w.id == name]
    assert isinstance(slider, Slider)
    assert (slider.initial, slider.min, slider.max, slider.step) == (default, low, high, step)
    assert getattr(Sampling().update({name: high}), name) == high
    assert getattr(Sampling().update({name: low}), name) == low
    for beyond in (high + step, low - step):
        with pytest.raises(InvalidSampling):
            Sampling().update({name: beyond})


def test_the_seed_and_the_system_prompt_have_their_limits() -> None:
    assert Sampling().seed is None
    assert Sampling().update({"seed": 2**31 - 1}).seed == 2**31 - 1  # llama.cpp's largest
    assert Sampling().update({"seed": "0"}).seed == 0
    for refused in (2**31, -1):
        with pytest.raises(InvalidSampling):
            Sampling().update({"seed": refused})
    assert Sampling().system_prompt == "You are a helpful assistant."
    assert len(Sampling().update({"system_prompt": "x" * 8000}).system_prompt) == 8000
    with pytest.raises(InvalidSampling):
        Sampling().update({"system_prompt": "x" * 8001})
    (prompt,) = [w for w in sampling_widgets(Sampling()) if w.id == "system_prompt"]
    assert isinstance(prompt, TextInput) and prompt.multiline


def test_a_refusal_says_in_words_what_is_wrong_with_each_value() -> None:
    with pytest.raises(InvalidSampling) as refused:
        Sampling().update({"temperature": math.inf, "top_p": 2, "tfs_z": 0.1, "seed": "-5"})
    assert sorted(refused.value.problems) == [
        "seed must be a whole number from 0 to 2147483647, or empty for a random one",
        "temperature must be a number from 0 to 2",
        "tfs_z is not a known setting",
        "top_p must be a number from 0 to 1",
    ]


def test_values_cannot_change_in_place() -> None:
    sampling = Sampling()
    with pytest.raises(ValidationError):
        sampling.temperature = 1.0  # type: ignore[misc]
    assert sampling.temperature == 0.7


def test_a_resumed_thread_keeps_its_valid_settings_and_skips_a_stale_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert Sampling().restore({"top_k": 5, "seed": "7"}) == Sampling(top_k=5, seed=7)
    restored = Sampling().restore({"temperature": 9, "top_p": 0.5, "seed": "7"})
    assert (restored.temperature, restored.top_p, restored.seed) == (0.7, 0.5, 7)
    assert "Ignoring a saved setting: temperature must be a number from 0 to 2" in caplog.text


def test_a_model_call_gets_every_value_but_the_system_prompt() -> None:
    sampling = Sampling(temperature=0.3, seed=9, system_prompt="Be brief.")
    params = sampling.generation_params()
    assert params == {
        "temperature": 0.3,
        "top_p": 0.95,
        "max_tokens": 512,
        "top_k": 40,
        "repeat_penalty": 1.1,
        "seed": 9,
        # Each of llama.cpp's chain, at what llama-cpp-python would use unsent: sent, so
        # the receipt's values are the ones that made the reply.
        "min_p": 0.05,
        "typical_p": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "mirostat_mode": 0,
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
    }


def test_the_panel_holds_the_seed_as_text() -> None:
    assert Sampling().as_settings()["seed"] == ""
    held = Sampling(seed=7, top_k=3).as_settings()
    assert held == {**Sampling(seed=7, top_k=3).model_dump(), "seed": "7"}


@pytest.mark.parametrize("seed", ["-5", -5, " -5 ", 2**31, "9" * 5000, "abc", "４２", 1.5, True])
def test_a_refused_seed_says_what_range_it_may_take(seed: object) -> None:
    with pytest.raises(InvalidSampling) as refused:
        Sampling().update({"seed": seed})
    assert refused.value.problems == [
        "seed must be a whole number from 0 to 2147483647, or empty for a random one"
    ]


def test_a_refused_seed_is_told_in_the_users_language() -> None:
    with pytest.raises(InvalidSampling) as refused:
        Sampling().update({"seed": "-5"})
    for lang, words in (
        ("en", "Seed must be a whole number from 0 to 2147483647"),
        ("zh-TW", "種子必須是 0 到 2147483647 之間的整數"),
        ("zh-CN", "种子必须是 0 到 2147483647 之间的整数"),
    ):
        said = describe(refused.value, lang)
        assert words in said, said
        if lang != "en":
            assert not re.search("[A-Za-z]", said), said  # no English inside the sentence


@pytest.mark.parametrize(
    ("changes", "en", "zh_tw", "zh_cn"),
    [
        (
            {"temperature": "warm"},
            "Temperature must be a number from 0 to 2",
            "溫度必須是 0 到 2 之間的數字",
            "温度必须是 0 到 2 之间的数字",
        ),
        (
            {"repeat_penalty": math.nan},
            "Repeat penalty must be a number from 1 to 2",
            "重複懲罰必須是 1 到 2 之間的數字",
            "重复惩罚必须是 1 到 2 之间的数字",
        ),
        (
            {"max_tokens": 2.5},
            "Max new tokens must be a whole number from 1 to 4096",
            "最多新詞元數必須是 1 到 4096 之間的整數",
            "最多新词元数必须是 1 到 4096 之间的整数",
        ),
        (
            {"max_tokens": 0},
            "Max new tokens must be a whole number from 1 to 4096",
            "最多新詞元數必須是 1 到 4096 之間的整數",
            "最多新词元数必须是 1 到 4096 之间的整数",
        ),
        (
            {"system_prompt": "x" * 8001},
            "System prompt must be text of at most 8000 characters",
            "系統提示詞必須是最多 8000 個字元的文字",
            "系统提示词必须是最多 8000 个字符的文本",
        ),
        (
            {"system_prompt": 5},
            "System prompt must be text of at most 8000 characters",
            "系統提示詞必須是最多 8000 個字元的文字",
            "系统提示词必须是最多 8000 个字符的文本",
        ),
    ],
)
def test_every_refused_value_says_what_it_may_be_in_the_users_language(
    changes: dict[str, object], en: str, zh_tw: str, zh_cn: str
) -> None:
    """Not pydantic's English ("value error, …", "input should be …") inside a Chinese
    sentence: the setting as the panel labels it, and the range or length it may take."""
    with pytest.raises(InvalidSampling) as refused:
        Sampling().update(changes)
    for lang, words in (("en", en), ("zh-TW", zh_tw), ("zh-CN", zh_cn)):
        said = describe(refused.value, lang)
        assert words in said, said
        if lang != "en":
            assert not re.search("[A-Za-z]", said), said


def test_several_refused_values_are_listed_in_the_users_punctuation() -> None:
    with pytest.raises(InvalidSampling) as refused:
        Sampling().update({"temperature": 3, "top_k": -1})
    assert "溫度必須是 0 到 2 之間的數字；" in describe(refused.value, "zh-TW")
    assert "Temperature must be a number from 0 to 2; " in describe(refused.value, "en")
