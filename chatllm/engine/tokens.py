"""Each sampled token's log-probability and its strongest rivals, read from llama.cpp's
logits as the token is drawn: what the sampling X-ray shows (issue 27).

llama-cpp-python's own `logprobs` need `logits_all=True`, which made streaming 4× slower
here; only the last position's logits are needed, and llama.cpp keeps them for the sampler
anyway (`llama_get_logits_ith(ctx, -1)`), so they are read in place, before the next
token is evaluated. The log-probabilities are of the model's raw distribution (before the
penalties, temperature and cuts), normalised over the whole vocabulary; the X-ray applies
the chain to them (chatllm.xray.chain).

Records travel to the app as bytes of `record_dtype(top)` rows, one per token sampled
(the end-of-generation token included): a few dozen bytes a token, no pickling of objects;
with them, the text piece of each token id not sent before in this generation (bytes: a
piece may be part of a character, as Chinese ones often are), so the X-ray can show any
reply's candidates whatever model is loaded when it is opened.
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

#: A delta's records: `record_dtype(top)` rows as bytes, and token id → its text piece.
Records = tuple[bytes, dict[int, bytes]]


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

    def __init__(self, context: Any, vocab: Any, n_vocab: int, top: int) -> None:
        import ctypes

        import llama_cpp

        self._logits_of = llama_cpp.llama_get_logits_ith
        self._to_piece = llama_cpp.llama_token_to_piece
        self._context = context
        self._vocab = vocab
        self._buffer = ctypes.create_string_buffer(64)
        self.n_vocab = n_vocab
        self.top = max(1, min(top, MOST_TOP, n_vocab))
        self.dtype = record_dtype(self.top)
        self._rows: list[tuple[Any, ...]] = []
        self._scratch = np.empty(n_vocab, dtype=np.float32)
        self._sent: set[int] = set()
        self._pieces: dict[int, bytes] = {}

    def _piece(self, token: int) -> None:
        if token in self._sent:
            return
        self._sent.add(token)
        # special: the end-of-generation token shows as what it is (<|im_end|>)
        n = self._to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, True)
        if n < 0:  # longer than the buffer: llama.cpp says how long
            import ctypes

            self._buffer = ctypes.create_string_buffer(-n)
            n = self._to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, True)
        self._pieces[token] = self._buffer.raw[: max(n, 0)]

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
        self._piece(token)
        for candidate in ids.tolist():
            self._piece(candidate)

    def flush(self) -> Records | None:
        """The records taken since the last flush, as bytes of `self.dtype` rows, and the
        pieces of the token ids they name that no flush has carried before."""
        if not self._rows:
            return None
        rows, self._rows = self._rows, []
        pieces, self._pieces = self._pieces, {}
        return np.array(rows, dtype=self.dtype).tobytes(), pieces


def read_records(data: bytes, top: int) -> np.ndarray[Any, Any]:
    """Records as `TokenRecorder.flush` wrote them."""
    return np.frombuffer(data, dtype=record_dtype(top))
