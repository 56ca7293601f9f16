"""The X-ray's sampling chain (chatllm.xray.chain) against llama.cpp's own samplers, as the
pinned llama-cpp-python builds them (`Llama._init_sampler`), on thousands of random
distributions and settings: each stage keeps the same candidates, and the final draw's
probabilities agree to 1e-5. No model is needed: the samplers work on a candidate array."""

from __future__ import annotations

import ctypes
import math
import random
from collections.abc import Iterator, Sequence

import llama_cpp
import pytest

from chatllm.xray.chain import (
    CUTS,
    Candidate,
    ChainSettings,
    run,
)

ROUNDS = 3000
PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size
VOCAB = 50_000  # the random candidates' ids are below it


class Sampler:
    """One llama.cpp sampler, freed when done."""

    def __init__(self, pointer: llama_cpp.llama_sampler_p) -> None:
        self.pointer = pointer

    def __enter__(self) -> llama_cpp.llama_sampler_p:
        return self.pointer

    def __exit__(self, *_: object) -> None:
        llama_cpp.llama_sampler_free(self.pointer)


class Candidates:
    """A llama_token_data_array llama.cpp's samplers change in place."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.data = (llama_cpp.llama_token_data * len(candidates))()
        for n, c in enumerate(candidates):
            self.data[n].id = c.id
            self.data[n].logit = c.logit
            self.data[n].p = 0.0
        self.array = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self.data, llama_cpp.llama_token_data_p),
            size=len(candidates),
            selected=-1,
            sorted=False,
        )

    def apply(self, sampler: llama_cpp.llama_sampler_p) -> None:
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(self.array))

    def ids(self) -> set[int]:
        return {self.array.data[n].id for n in range(self.array.size)}

    def probabilities(self) -> dict[int, float]:
        return {self.array.data[n].id: self.array.data[n].p for n in range(self.array.size)}

    def logits(self) -> dict[int, float]:
        return {self.array.data[n].id: self.array.data[n].logit for n in range(self.array.size)}


def llama_chain(
    candidates: Sequence[Candidate], settings: ChainSettings, history: Sequence[int]
) -> tuple[dict[str, set[int]], dict[int, float], dict[int, float]]:
    """llama.cpp's samplers one by one as `Llama._init_sampler` chains them (min_keep 1):
    the ids after each stage, the draw's probabilities, the logits after the penalties."""
    array = Candidates(candidates)
    kept: dict[str, set[int]] = {}
    with Sampler(
        llama_cpp.llama_sampler_init_penalties(
            VOCAB,
            PENALTY_LAST_N,
            settings.repeat_penalty,
            settings.frequency_penalty,
            settings.presence_penalty,
        )
    ) as penalties:
        for token in history:
            llama_cpp.llama_sampler_accept(penalties, token)
        array.apply(penalties)
    kept["penalties"] = array.ids()
    penalized = array.logits()
    stages = (
        ("top_k", lambda: llama_cpp.llama_sampler_init_top_k(settings.top_k)),
        ("typical_p", lambda: llama_cpp.llama_sampler_init_typical(settings.typical_p, 1)),
        ("top_p", lambda: llama_cpp.llama_sampler_init_top_p(settings.top_p, 1)),
        ("min_p", lambda: llama_cpp.llama_sampler_init_min_p(settings.min_p, 1)),
    )
    for name, make in stages:
        with Sampler(make()) as stage:
            array.apply(stage)
        kept[name] = array.ids()
    with Sampler(llama_cpp.llama_sampler_init_temp(settings.temperature)) as temp:
        array.apply(temp)
    with Sampler(llama_cpp.llama_sampler_init_dist(1234)) as draw:
        array.apply(draw)
    return kept, array.probabilities(), penalized


def random_cases(
    seed: int, rounds: int
) -> Iterator[tuple[list[Candidate], ChainSettings, list[int]]]:
    rng = random.Random(seed)
    for _ in range(rounds):
        size = rng.choice([1, 2, 3, 5, 10, 20, 50, 200])
        scale = rng.choice([0.3, 1.0, 3.0, 8.0])
        ids = rng.sample(range(VOCAB), size)
        candidates = [Candidate(i, rng.gauss(0.0, scale)) for i in ids]
        history = [rng.choice(ids) for _ in range(rng.randrange(0, 12))] + [
            rng.randrange(VOCAB) for _ in range(rng.randrange(0, 4))
        ]
        settings = ChainSettings(
            temperature=rng.choice([0.05, 0.4, 0.8, 1.0, 1.5, rng.uniform(0.01, 3.0)]),
            top_k=rng.choice([-1, 0, 1, 3, 10, 40, 1000]),
            top_p=rng.choice([1.0, 0.95, 0.5, 0.1, rng.random()]),
            min_p=rng.choice([0.0, 0.05, 0.2, 0.9, rng.random()]),
            typical_p=rng.choice([1.0, 1.0, 0.9, 0.5, rng.random()]),
            repeat_penalty=rng.choice([1.0, 1.1, 1.5, 0.8]),
            frequency_penalty=rng.choice([0.0, 0.0, 0.5, -0.3]),
            presence_penalty=rng.choice([0.0, 0.0, 0.7, -0.2]),
        )
        yield candidates, settings, history


def test_each_stage_keeps_what_llama_cpp_keeps_and_the_draw_has_its_probabilities() -> None:
    differences = []
    for n, (candidates, settings, history) in enumerate(random_cases(27, ROUNDS)):
        ours = run(candidates, settings, history)
        kept, probabilities, penalized = llama_chain(candidates, settings, history)
        for c in candidates:  # float32 there: the same to its precision
            assert math.isclose(ours.logits[c.id], penalized[c.id], rel_tol=1e-5, abs_tol=1e-5)
        stages = {stage: set(ids) for stage, ids in ours.kept.items()}
        if stages != kept:
            differences.append((n, settings, {s: (stages[s], kept[s]) for s in kept}))
            continue
        assert ours.probabilities.keys() == probabilities.keys()
        for token, p in probabilities.items():
            assert abs(ours.probabilities[token] - p) <= 1e-5, (n, token)
        # Every candidate is kept to the end or named with the stage that cut it.
        assert set(ours.cut_by) | set(ours.probabilities) == {c.id for c in candidates}
        assert set(ours.cut_by.values()) <= set(CUTS)
    assert not differences, differences[:3]


@pytest.mark.parametrize(
    ("settings", "mode"),
    [
        (ChainSettings(temperature=0.0), "greedy"),
        (ChainSettings(temperature=-1.0), "draw"),
        (ChainSettings(temperature=0.8, mirostat_mode=2), "mirostat"),
    ],
)
def test_the_chains_other_modes_cut_nothing_but_greedy(settings: ChainSettings, mode: str) -> None:
    """temperature 0 is greedy (one candidate, every cut skipped), below 0 a draw from all,
    mirostat its own; as `Llama._init_sampler` builds them."""
    candidates = [Candidate(1, 2.0), Candidate(2, 1.0), Candidate(3, -1.0)]
    outcome = run(candidates, settings)
    assert outcome.mode == mode
    if mode == "greedy":
        assert outcome.probabilities == {1: 1.0}
        assert outcome.cut_by == {2: "greedy", 3: "greedy"}
    else:
        assert outcome.cut_by == {}
        assert math.isclose(sum(outcome.probabilities.values()), 1.0)


def test_temperature_moves_the_probabilities_of_what_the_cuts_kept_never_the_cut() -> None:
    """The pinned chain applies temperature after the cuts: top_p 0.5 keeps the same
    candidates at T 0.2 and T 2.0, where a textbook chain (temperature first) would not."""
    candidates = [Candidate(i, x) for i, x in enumerate([2.0, 1.6, 1.2, 0.4, -0.5])]
    cold = run(candidates, ChainSettings(temperature=0.2, top_p=0.5, min_p=0.0, top_k=0))
    hot = run(candidates, ChainSettings(temperature=2.0, top_p=0.5, min_p=0.0, top_k=0))
    assert cold.kept["top_p"] == hot.kept["top_p"] == (0, 1)
    assert cold.probabilities[0] > 0.85 > 0.6 > hot.probabilities[0]


@pytest.mark.parametrize("size", [2, 4, 8])
@pytest.mark.parametrize("p", [0.25, 0.5, 0.75])
def test_where_the_probability_reaches_p_exactly_each_cut_stops_as_llama_cpp_does(
    size: int, p: float
) -> None:
    """Equal candidates, whose probabilities add up to p exactly: top_p stops at the one
    that reaches p, typical_p only past it (which of equal candidates is kept is the
    sort's choice, so the counts are compared)."""
    candidates = [Candidate(i, 0.5) for i in range(size)]
    for stage, settings in (
        ("top_p", ChainSettings(top_k=0, top_p=p, min_p=0.0)),
        ("typical_p", ChainSettings(top_k=0, typical_p=p, min_p=0.0, top_p=1.0)),
    ):
        kept, _, _ = llama_chain(candidates, settings, [])
        assert len(run(candidates, settings).kept[stage]) == len(kept[stage]), stage
