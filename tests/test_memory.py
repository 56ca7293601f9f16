"""The web process's garbage collector leaves the app's start-up objects alone."""

from __future__ import annotations

import gc

from chatllm.memory import freeze_startup_objects


def test_objects_alive_at_start_are_out_of_later_collections() -> None:
    tracked = len(gc.get_objects())  # what a full collection would walk now
    try:
        frozen = freeze_startup_objects()
        assert frozen >= tracked * 0.9  # every one alive then (a few more may have come)
        assert len(gc.get_objects()) < tracked * 0.1
        made_after = [[n] for n in range(1000)]
        assert len(gc.get_objects()) >= 1000  # what comes later is collected as before
        del made_after
    finally:
        gc.unfreeze()
