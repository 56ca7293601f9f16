"""Sliders: one validated model; bad values are refused and the old ones kept."""

from __future__ import annotations

import math

import pytest
from chainlit.input_widget import Slider, TextInput

from chatllm.errors import InvalidSampling
from chatllm.sampling import Sampling, parse_sampling


def test_defaults_are_within_their_own_bounds() -> None:
    assert parse_sampling(Sampling().model_dump()) == Sampling()


def test_sliders_carry_the_models_bounds_and_current_values() -> None:
    sampling = Sampling(temperature=0.4, top_p=0.5, seed=7)
    widgets = {w.id: w for w in sampling.widgets()}
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
    labels = {w.id: w.label for w in Sampling().widgets("zh-TW")}
    assert labels["temperature"] == "溫度"
    labels = {w.id: w.label for w in Sampling().widgets("zh-CN")}
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
        ({"seed": 2**40}, "seed"),
        ({"system_prompt": "x" * 9000}, "system_prompt"),
        ({"system_prompt": 5}, "system_prompt"),
        ({"min_p": 0.1}, "min_p"),
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
