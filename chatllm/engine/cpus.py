"""How many CPU threads llama.cpp runs on by default: one per physical core it may use."""

from __future__ import annotations

import math
import os
from pathlib import Path


def default_threads(system: Path = Path("/sys")) -> int:
    """llama.cpp's CPU threads when none is set: one per physical core this process may run
    on, and no more than its container's CPU quota allows.

    llama-cpp-python's own default is half the CPUs (for generation; prompts already get
    them all), for machines where every core runs two hardware threads: there a second
    thread on a core shares its arithmetic units and adds little. Where each CPU is a core
    of its own, as on most virtual machines, that leaves cores idle: on 2-core machines of
    this project raw llama.cpp streamed 64.9 and 39.6 tokens/s on 1 thread, 103.5 and 75.5
    on 2; bench/cpu_threads.py measured 108.6 against 117.8 on another day, when the
    machine was busier, and 2 threads remained the fastest. So the cores are counted:
    the CPUs in this process's affinity, one per (package, core) of the kernel's topology,
    capped by a cgroup v2 quota (`cpu.max`), which a container's `--cpus` sets."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not usable:
        usable = list(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    for cpu in usable:
        topology = system / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:  # no topology (another kernel, a sandbox): each CPU a core
            package, core = "cpu", str(cpu)
        cores.add((package, core))
    count = len(cores)
    try:
        quota, period = (system / "fs" / "cgroup" / "cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)
