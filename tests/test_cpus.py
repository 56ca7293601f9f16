"""llama.cpp's default thread count: one per physical core the process may use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chatllm.engine.cpus import default_threads


def machine(root: Path, cores: dict[int, tuple[int, int]], quota: str | None = None) -> Path:
    """A /sys with each CPU's (package, core), and a cgroup v2 `cpu.max` if given."""
    for cpu, (package, core) in cores.items():
        topology = root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    if quota is not None:
        (root / "fs" / "cgroup").mkdir(parents=True)
        (root / "fs" / "cgroup" / "cpu.max").write_text(f"{quota}\n")
    return root


@pytest.fixture(autouse=True)
def four_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process may run on CPUs 0-3 (whatever this machine has)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})


def test_hardware_threads_of_one_core_count_once(tmp_path: Path) -> None:
    smt = {0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1)}  # 2 cores, 2 threads each
    assert default_threads(machine(tmp_path, smt)) == 2


def test_cores_of_every_package_count(tmp_path: Path) -> None:
    two_sockets = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)}  # core ids repeat per package
    assert default_threads(machine(tmp_path, two_sockets)) == 4


def test_only_the_cpus_the_process_may_use_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    separate = {n: (0, n) for n in range(4)}
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {2, 3})  # taskset -c 2,3
    assert default_threads(machine(tmp_path, separate)) == 2


@pytest.mark.parametrize(("quota", "threads"), [("150000 100000", 2), ("50000 100000", 1)])
def test_a_containers_cpu_quota_caps_it(tmp_path: Path, quota: str, threads: int) -> None:
    separate = {n: (0, n) for n in range(4)}
    assert default_threads(machine(tmp_path, separate, quota)) == threads


def test_without_a_quota_or_a_topology_each_cpu_is_a_core(tmp_path: Path) -> None:
    separate = {n: (0, n) for n in range(4)}
    assert default_threads(machine(tmp_path, separate, "max 100000")) == 4
    assert default_threads(tmp_path / "nothing-here") == 4
