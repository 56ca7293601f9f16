"""The sampling chain of the pinned llama.cpp as arithmetic on one token's candidates:
which of them each stage keeps, which stage cut the others, and the probabilities the
final draw uses (issue 27).

The chain is llama-cpp-python 0.3.36's, as `Llama._init_sampler` builds it for every
`generate()`, not the textbook order:

  penalties (repeat, frequency, presence: over the tokens generated so far)
  then, by temperature:
    < 0   a draw from all of them (no cut)
    == 0  greedy: the most likely, every cut skipped
    > 0   mirostat 1 or 2 alone (its cut depends on state this module does not keep),
          else top_k → typical_p → top_p → min_p → temperature → draw

So temperature changes the probabilities of what the cuts kept, never what they keep;
top_k ≤ 0, typical_p ≥ 1, top_p ≥ 1 and min_p ≤ 0 do nothing; every cut keeps at least
one candidate. Each stage here follows llama.cpp's src/llama-sampling.cpp at that release
(ties aside), and tests/test_xray_chain.py checks it against the library's own samplers on
thousands of random distributions.

Plain Python floats (the browser's numbers too), over a few dozen candidates at a time:
a recorded token's top candidates, or a test's whole vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

#: The stages that can cut, in the chain's order (the X-ray names each candidate's).
CUTS = ("top_k", "typical_p", "top_p", "min_p")

Mode = Literal["sample", "greedy", "draw", "mirostat"]


@dataclass(frozen=True)
class ChainSettings:
    """The sampling values the chain reads (llama-cpp-python's defaults)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    mirostat_mode: int = 0


@dataclass(frozen=True)
class Candidate:
    """One token the model weighed: its id and logit (any shift of all logits alike, such
    as log-probabilities, gives the same result)."""

    id: int
    logit: float


@dataclass(frozen=True)
class Outcome:
    """What the chain did to one token's candidates."""

    mode: Mode
    #: after each stage that ran (penalties, then CUTS in order), the ids it kept
    kept: dict[str, tuple[int, ...]]
    #: each candidate cut → the stage that cut it
    cut_by: dict[int, str]
    #: the final draw's probability of each candidate it could pick (greedy: 1 for one)
    probabilities: dict[int, float]
    #: the logits after the penalties (what every cut saw)
    logits: dict[int, float] = field(default_factory=dict)


def softmax(logits: Sequence[float]) -> list[float]:
    """llama.cpp's: exp(l - max), summed in order, each divided by the sum."""
    if not logits:
        return []
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = 0.0
    for w in weights:
        total += w
    return [w / total for w in weights]


def penalized(
    candidates: Sequence[Candidate], history: Iterable[int], settings: ChainSettings
) -> list[Candidate]:
    """The candidates after the penalties, given the tokens generated before this one
    (llama-cpp-python counts the last 64; the prompt is never counted). A token seen
    `c` times: its logit divided by the repeat penalty if positive, else multiplied,
    then less c × frequency penalty, and less the presence penalty once."""
    repeat = settings.repeat_penalty
    frequency = settings.frequency_penalty
    presence = settings.presence_penalty
    if repeat == 1.0 and frequency == 0.0 and presence == 0.0:
        return list(candidates)
    counts: dict[int, int] = {}
    for token in history:
        counts[token] = counts.get(token, 0) + 1
    out = []
    for c in candidates:
        seen = counts.get(c.id, 0)
        if not seen:
            out.append(c)
            continue
        logit = c.logit * repeat if c.logit <= 0 else c.logit / repeat
        out.append(Candidate(c.id, logit - seen * frequency - presence))
    return out


def _by_logit(candidates: Sequence[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: -c.logit)


def top_k(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    if k <= 0:
        return list(candidates)
    return _by_logit(candidates)[: min(k, len(candidates))]


def typical(candidates: Sequence[Candidate], p: float, min_keep: int = 1) -> list[Candidate]:
    """Locally typical sampling: the candidates whose surprise is nearest the
    distribution's entropy, until their probability passes p."""
    if p >= 1.0 or not candidates:
        return list(candidates)
    ordered = _by_logit(candidates)
    probs = softmax([c.logit for c in ordered])
    entropy = 0.0
    for q in probs:
        if q > 0:
            entropy += -q * math.log(q)
    shifted = [abs(-math.log(q) - entropy) if q > 0 else math.inf for q in probs]
    order = sorted(range(len(ordered)), key=lambda i: shifted[i])
    total = 0.0
    last = len(order)
    for n, i in enumerate(order):
        total += probs[i]
        if total > p and n >= min_keep - 1:
            last = n + 1
            break
    return [ordered[i] for i in order[:last]]


def top_p(candidates: Sequence[Candidate], p: float, min_keep: int = 1) -> list[Candidate]:
    """Nucleus: the most likely candidates until their probability reaches p."""
    if p >= 1.0 or not candidates:
        return list(candidates)
    ordered = _by_logit(candidates)
    probs = softmax([c.logit for c in ordered])
    total = 0.0
    for n, q in enumerate(probs):
        total += q
        if total >= p and n + 1 >= min_keep:
            return ordered[: n + 1]
    return ordered


def min_p(candidates: Sequence[Candidate], p: float, min_keep: int = 1) -> list[Candidate]:
    """The candidates at least p times as likely as the most likely one."""
    if p <= 0.0 or not candidates:
        return list(candidates)
    floor = max(c.logit for c in candidates) + math.log(p)
    kept = [c for c in candidates if c.logit >= floor]
    if len(kept) >= min_keep:
        return kept
    ordered = _by_logit(candidates)
    return ordered[: max(min_keep, 1)]


def run(
    candidates: Sequence[Candidate],
    settings: ChainSettings,
    history: Iterable[int] = (),
) -> Outcome:
    """The chain over one token's `candidates`, after `history` (the tokens generated
    before it, for the penalties)."""
    after = penalized(candidates, history, settings)
    logits = {c.id: c.logit for c in after}
    kept: dict[str, tuple[int, ...]] = {"penalties": tuple(c.id for c in after)}
    if settings.temperature < 0:
        probs = softmax([c.logit for c in after])
        return Outcome("draw", kept, {}, dict(zip(logits, probs, strict=True)), logits)
    if settings.temperature == 0:
        best = _by_logit(after)[0].id if after else None
        cut = {c.id: "greedy" for c in after if c.id != best}
        return Outcome("greedy", kept, cut, {best: 1.0} if best is not None else {}, logits)
    if settings.mirostat_mode in (1, 2):
        probs = softmax([c.logit for c in after])
        return Outcome("mirostat", kept, {}, dict(zip(logits, probs, strict=True)), logits)
    cut_by: dict[int, str] = {}
    current = after
    stages: tuple[tuple[str, Callable[[Sequence[Candidate]], list[Candidate]]], ...] = (
        ("top_k", lambda cs: top_k(cs, settings.top_k)),
        ("typical_p", lambda cs: typical(cs, settings.typical_p)),
        ("top_p", lambda cs: top_p(cs, settings.top_p)),
        ("min_p", lambda cs: min_p(cs, settings.min_p)),
    )
    for stage, apply in stages:
        left = apply(current)
        ids = {c.id for c in left}
        for c in current:
            if c.id not in ids:
                cut_by[c.id] = stage
        kept[stage] = tuple(c.id for c in left)
        current = left
    probs = softmax([c.logit / settings.temperature for c in current])
    return Outcome(
        "sample", kept, cut_by, dict(zip((c.id for c in current), probs, strict=True)), logits
    )


def candidates_of(logits: Mapping[int, float]) -> list[Candidate]:
    """Candidates from id → logit (or log-probability)."""
    return [Candidate(int(i), float(x)) for i, x in logits.items()]
