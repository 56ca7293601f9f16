"""The web process's garbage collector: what it was given at start is left alone.

A full collection walks every object the process tracks, and by the time the app serves
that is some 290,000 of them (Chainlit, LangChain, the openai client's types, pydantic's
schemas), nearly all of which live as long as the process. Walking them stopped every
stream at once for 210-300 ms a few times a minute under load (bench/load.py, 25 users:
those pauses were the tokens' p95 delay). `gc.freeze()` moves them out of the
collector's sight once the app has started; later full collections walk only what came
after, 30-55 ms in the same run. No collection first: at that moment it found no garbage
to free (0 objects) and took 220 ms of the start.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("chatllm")


def freeze_startup_objects() -> int:
    """Leave every object alive now out of later collections; how many that was."""
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("Left %d objects of the app's start out of garbage collection", frozen)
    return frozen
