"""A reply's token records as the store keeps them: one compressed blob per reply, outside
the step's metadata (a thread opens without reading them), read when its X-ray opens.

The blob: zlib of a 4-byte little-endian header length, a JSON header (format, candidates
per token, token count, and each token id's text piece in hex: a piece may be part of a
character), then the rows as chatllm.engine.tokens wrote them.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from chatllm.engine.tokens import record_dtype

FORMAT = 1


class UnreadableRecords(ValueError):
    """A blob that is not token records of a known format."""


#: Where a record's ids come from: the model's vocabulary (the local engine), or the
#: reply's own numbering of the texts an endpoint sent (it sends no ids).
IdSource = Literal["model", "text"]


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare views
class TokenRecords:
    """Each token a reply drew, with its candidates, and the text of every id named. A
    candidate id below 0 is none (an endpoint sent fewer than `top`)."""

    top: int
    rows: np.ndarray[Any, Any]
    pieces: dict[int, bytes]
    ids: IdSource = "model"

    @classmethod
    def of(
        cls, top: int, data: bytes, pieces: dict[int, bytes], ids: IdSource = "model"
    ) -> TokenRecords | None:
        """The records a generation heard (None: it recorded nothing)."""
        if not data or top <= 0:
            return None
        rows = np.frombuffer(bytes(data), dtype=record_dtype(top))
        return cls(top, rows, dict(pieces), ids)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def pack(self) -> bytes:
        header = json.dumps(
            {
                "format": FORMAT,
                "top": self.top,
                "ids": self.ids,
                "count": len(self),
                "pieces": {str(i): p.hex() for i, p in sorted(self.pieces.items())},
            },
            separators=(",", ":"),
        ).encode()
        return zlib.compress(struct.pack("<I", len(header)) + header + self.rows.tobytes(), 6)

    @classmethod
    def unpack(cls, blob: bytes) -> TokenRecords:
        try:
            raw = zlib.decompress(blob)
            (size,) = struct.unpack_from("<I", raw)
            header = json.loads(raw[4 : 4 + size])
            if header.get("format") != FORMAT:
                raise UnreadableRecords(f"token records of format {header.get('format')}")
            top = int(header["top"])
            rows = np.frombuffer(raw[4 + size :], dtype=record_dtype(top))
            if rows.shape[0] != int(header["count"]):
                raise UnreadableRecords("token records cut short")
            pieces = {int(i): bytes.fromhex(p) for i, p in header["pieces"].items()}
            ids = header.get("ids", "model")
            if ids not in ("model", "text"):
                raise UnreadableRecords(f"token records with ids from {ids!r}")
        except (zlib.error, struct.error, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, UnreadableRecords):
                raise
            raise UnreadableRecords(str(exc)) from exc
        return cls(top, rows, pieces, ids)

    def view(self) -> dict[str, Any]:
        """The records as the X-ray reads them: per token its id, log-probability, the
        distribution's entropy (nats) and its candidates (id, log-probability), likeliest
        first; and each id's piece as text (a part of a character shows as U+FFFD) and as
        hex bytes (to join parts into characters)."""
        return {
            "top": self.top,
            "ids": self.ids,
            "tokens": [
                {
                    "id": int(row["token"]),
                    "logprob": _finite(row["logprob"]),
                    # None where unknown (an endpoint sends only the top candidates)
                    "entropy": round(float(row["entropy"]), 6)
                    if math.isfinite(row["entropy"])
                    else None,
                    "candidates": [
                        [int(i), _finite(lp)]
                        for i, lp in zip(row["ids"], row["logprobs"], strict=True)
                        if i >= 0
                    ],
                }
                for row in self.rows
            ],
            "pieces": {
                str(i): {"text": p.decode("utf-8", errors="replace"), "hex": p.hex()}
                for i, p in self.pieces.items()
            },
        }


class TextTokens:
    """An endpoint's token log-probabilities (OpenAI's streamed `logprobs.content`) as
    records. An endpoint sends texts, not ids, and only its top candidates (no entropy):
    each distinct text gets an id of this reply's own, in order of first sight.
    llama_cpp.server sends a part of a character as "" (every such part then shares one
    id) and `bytes` as null; OpenAI's API sends each text's `bytes`, used where given."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.dtype = record_dtype(top)
        self._ids: dict[bytes, int] = {}
        self._pieces: dict[int, bytes] = {}

    def _id(self, entry: Mapping[str, Any]) -> int:
        raw = entry.get("bytes")
        if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
            piece = bytes(raw)
        else:
            piece = str(entry.get("token") or "").encode("utf-8")
        if piece not in self._ids:
            self._ids[piece] = len(self._ids)
            self._pieces[self._ids[piece]] = piece
        return self._ids[piece]

    def take(self, entries: Sequence[Mapping[str, Any]]) -> tuple[bytes, dict[int, bytes]]:
        """Records of `entries` (one per token), and the pieces of texts first seen."""
        rows = []
        for entry in entries:
            listed = [c for c in entry.get("top_logprobs") or [] if isinstance(c, Mapping)]
            listed = listed[: self.top]
            ids = [self._id(c) for c in listed] + [-1] * (self.top - len(listed))
            logprobs = [_logprob(c.get("logprob")) for c in listed]
            logprobs += [-math.inf] * (self.top - len(listed))
            token = self._id(entry)
            rows.append((token, _logprob(entry.get("logprob")), math.nan, ids, logprobs))
        pieces, self._pieces = self._pieces, {}
        return np.array(rows, dtype=self.dtype).tobytes(), pieces


def _logprob(value: Any) -> float:
    """A log-probability as a server sent it; one missing or not a number is -inf."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return -math.inf


def _finite(value: Any) -> float | None:
    """For the page's JSON, which has no infinity: None where unknown."""
    number = float(value)
    return round(number, 6) if math.isfinite(number) else None
