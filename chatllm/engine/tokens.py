"""Each sampled token's log-probability and its strongest rivals, read from llama.cpp's
logits as the token is drawn: what the sampling X-ray shows (issue 27).

llama-cpp-python's own `logprobs` need `logits_all=True`, which made streaming 4× slower
here; only the last position's logits are needed, and llama.cpp keeps them for the sampler
anyway (`llama_get_logits_ith(ctx, -1)`), so they are read in place, before the next
token is evaluated. The log-probabilities are of the model's raw distribution (before the
penalties, temperature and cuts), normalised over the whole vocabulary; the X-ray applies
the chain to them (chatllm.xray.chain).

Records travel to the app as bytes of `record_dtype(top)` rows, one per token sampled
(the end-of-generation token included): a few dozen bytes a token, no pickling of objects.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Candidates recorded per token unless the app asks for another count, and the most.
DEFAULT_TOP = 10
MOST_TOP = 20

#: Vocabulary slices whose maxima narrow the search for the top candidates (below).
_BLOCK = 1024


def record_dtype(top: int) -> np.dtype[Any]:
    """One token's record: its id and log-probability, the distribution's entropy (nats),
    and the `top` likeliest candidates' ids and log-probabilities, likeliest first."""
    return np.dtype(
        [
            ("token", "<i4"),
            ("logprob", "<f4"),
            ("entropy", "<f4"),
            ("ids", "<i4", (top,)),
            ("logprobs", "<f4", (top,)),
        ]
    )


def top_ids(logits: np.ndarray[Any, Any], top: int) -> np.ndarray[Any, Any]:
    """The ids of the `top` largest logits, largest first.

    np.argpartition over a 49k vocabulary took ~400 µs a token here (4 % of a token at 100
    tokens/s); this takes ~20: the `top`-th largest of the slices' maxima is exceeded or
    met by at least `top` logits (each slice's maximum is one), so every one of the `top`
    largest is among the logits at or above it, a few dozen to sort."""
    n = logits.shape[0]
    if n <= _BLOCK or top >= n // _BLOCK:
        chosen = np.argpartition(logits, -top)[-top:] if top < n else np.arange(n)
    else:
        whole = n - n % _BLOCK
        maxima = logits[:whole].reshape(-1, _BLOCK).max(axis=1)
        if whole < n:
            maxima = np.append(maxima, logits[whole:].max())
        floor = np.partition(maxima, -top)[-top]
        chosen = np.flatnonzero(logits >= floor)
    return chosen[np.argsort(-logits[chosen], kind="stable")][:top]


class TokenRecorder:
    """Records each token of one generation from the context's last logits."""

    def __init__(self, context: Any, n_vocab: int, top: int) -> None:
        import llama_cpp

        self._logits_of = llama_cpp.llama_get_logits_ith
        self._context = context
        self.n_vocab = n_vocab
        self.top = max(1, min(top, MOST_TOP, n_vocab))
        self.dtype = record_dtype(self.top)
        self._rows: list[tuple[Any, ...]] = []
        self._scratch = np.empty(n_vocab, dtype=np.float32)

    def take(self, token: int) -> None:
        """Record `token`, just sampled from the logits llama.cpp holds now."""
        pointer = self._logits_of(self._context, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        peak = float(logits.max())
        weights = np.exp(np.subtract(logits, peak, out=self._scratch), out=self._scratch)
        total = float(weights.sum(dtype=np.float64))
        normaliser = peak + math.log(total)
        # H = log Z - E[logit], over the whole vocabulary
        entropy = normaliser - float(weights.dot(logits)) / total
        ids = top_ids(logits, self.top)
        self._rows.append(
            (token, float(logits[token]) - normaliser, entropy, ids, logits[ids] - normaliser)
        )

    def flush(self) -> bytes:
        """The records taken since the last flush, as bytes of `self.dtype` rows."""
        if not self._rows:
            return b""
        rows, self._rows = self._rows, []
        return np.array(rows, dtype=self.dtype).tobytes()


def read_records(data: bytes, top: int) -> np.ndarray[Any, Any]:
    """Records as `TokenRecorder.flush` wrote them."""
    return np.frombuffer(data, dtype=record_dtype(top))
