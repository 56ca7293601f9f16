"""Element files on local disk, under generated names only."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

_KEY = re.compile(r"^[0-9a-f]{32}$")


class FileStore:
    """Stores bytes under `root` as <2 hex>/<32 hex>; never under a name from a client."""

    #: Where the app serves a stored element; the route checks the thread's author.
    URL_PREFIX = "/chatllm/elements"

    def __init__(self, root: Path, url_root: str = "") -> None:
        self.root = root
        #: The root path the app is served under (`chainlit run --root-path`), before
        #: `URL_PREFIX` in the URLs the page fetches, and before every other link the
        #: app makes (an imported thread's, the public share page's icon).
        self.url_root = url_root.rstrip("/")

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a file key: {key!r}")
        return self.root / key[:2] / key

    def save(self, data: bytes) -> str:
        """Store `data`, readable by this user only (like the database); its key."""
        key = uuid.uuid4().hex
        path = self.path(key)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        partial = path.with_suffix(".partial")
        descriptor = os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
        return key

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def url(self, thread_id: str, element_id: str) -> str:
        return f"{self.url_root}{self.URL_PREFIX}/{thread_id}/{element_id}"
