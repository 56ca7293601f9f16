"""A reply's token records as the store keeps them: one compressed blob per reply, outside
the step's metadata (a thread opens without reading them), read when its X-ray opens.

The blob: zlib of a 4-byte little-endian header length, a JSON header (format, candidates
per token, token count, and each token id's text piece in hex: a piece may be part of a
character), then the rows as chatllm.engine.tokens wrote them.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatllm.engine.tokens import record_dtype

FORMAT = 1


class UnreadableRecords(ValueError):
    """A blob that is not token records of a known format."""


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare views
class TokenRecords:
    """Each token a reply drew, with its candidates, and the text of every id named."""

    top: int
    rows: np.ndarray[Any, Any]
    pieces: dict[int, bytes]

    @classmethod
    def of(cls, top: int, data: bytes, pieces: dict[int, bytes]) -> TokenRecords | None:
        """The records a generation heard (None: it recorded nothing)."""
        if not data or top <= 0:
            return None
        return cls(top, np.frombuffer(bytes(data), dtype=record_dtype(top)), dict(pieces))

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def pack(self) -> bytes:
        header = json.dumps(
            {
                "format": FORMAT,
                "top": self.top,
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
        except (zlib.error, struct.error, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, UnreadableRecords):
                raise
            raise UnreadableRecords(str(exc)) from exc
        return cls(top, rows, pieces)

    def view(self) -> dict[str, Any]:
        """The records as the X-ray reads them: per token its id, log-probability, the
        distribution's entropy (nats) and its candidates (id, log-probability), likeliest
        first; and each id's piece as text (a part of a character shows as U+FFFD) and as
        hex bytes (to join parts into characters)."""
        return {
            "top": self.top,
            "tokens": [
                {
                    "id": int(row["token"]),
                    "logprob": round(float(row["logprob"]), 6),
                    "entropy": round(float(row["entropy"]), 6),
                    "candidates": [
                        [int(i), round(float(lp), 6)]
                        for i, lp in zip(row["ids"], row["logprobs"], strict=True)
                    ],
                }
                for row in self.rows
            ],
            "pieces": {
                str(i): {"text": p.decode("utf-8", errors="replace"), "hex": p.hex()}
                for i, p in self.pieces.items()
            },
        }
