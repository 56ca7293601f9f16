"""`python -m chatllm sweep`: one prompt over a grid of sampling values, on the real model."""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from matplotlib import font_manager
from PIL import Image

from chatllm.backends import Backend
from chatllm.backends.local import LocalBackend
from chatllm.cli import main, parser
from chatllm.config import Settings
from chatllm.errors import ChatLLMError
from chatllm.receipts import Receipt
from chatllm.sampling import Sampling
from chatllm.sweep import (
    OUTPUTS,
    Reply,
    SweepStopped,
    plan_sweep,
    prepare_out,
    run_sweep,
)
from chatllm.xray.records import TokenRecords

PROMPT = "Name a colour."
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("length.png", "distinct.png", "tokens_per_second.png", "summary.png")


def parse(*argv: str) -> argparse.Namespace:
    """The arguments as `python -m chatllm sweep …` reads them."""
    return parser().parse_args(["sweep", *argv])


async def sweep(settings: Settings, *argv: str) -> str:
    """Run the command as the CLI does and return what it prints."""
    args = parse(*argv)
    text: str = await args.handler(args, settings)
    return text


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def record(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def as_csv(value: Any) -> str:
    """A JSON value as the csv module writes it (a list of names: one cell, spaced)."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return "" if value is None else str(value)


@dataclass
class FixedSweeps:
    """The same fixed-seed sweep, run twice into two folders."""

    first: Path
    second: Path
    printed: str


@pytest.fixture(scope="module")
async def fixed(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> FixedSweeps:
    outs = [tmp_path_factory.mktemp("sweep"), tmp_path_factory.mktemp("again")]
    printed = [
        await sweep(
            settings,
            PROMPT,
            "--grid",
            "temperature=0,1.2",
            "--grid",
            "top-p=0.5,1",
            "--repeats",
            "2",
            "--max-tokens",
            "8",
            "--seed",
            "41",
            "--out",
            str(out),
            "--quiet",
        )
        for out in outs
    ]
    return FixedSweeps(outs[0], outs[1], printed[0])


def test_every_reply_is_a_row_with_its_cell_values_and_receipt(
    fixed: FixedSweeps, settings: Settings
) -> None:
    table = rows(fixed.first / "sweep.csv")
    assert list(table[0]) == [
        "cell",
        "temperature",
        "top_p",
        "repeat",
        "text",
        "backend",
        "model",
        "sampling.temperature",
        "sampling.top_p",
        "sampling.min_p",
        "sampling.max_tokens",
        "sampling.top_k",
        "sampling.repeat_penalty",
        "sampling.seed",
        "sampling.system_prompt",
        "sampling.typical_p",
        "sampling.presence_penalty",
        "sampling.frequency_penalty",
        "sampling.mirostat_mode",
        "sampling.mirostat_tau",
        "sampling.mirostat_eta",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "tokens_estimated",
        "prompt_messages",
        "prompt_digest",
        "ttft_ms",
        "queued_ms",
        "tokens_per_second",
        "duration_ms",
        "error",
        "created_at",
        "not_sent",
        "token_records",
    ]
    # Grid order: the first axis outermost, then the repeats of each cell.
    expected = list(itertools.product([0.0, 1.2], [0.5, 1.0], [0, 1]))
    assert [
        (float(r["temperature"]), float(r["top_p"]), int(r["repeat"])) for r in table
    ] == expected
    assert [int(r["cell"]) for r in table] == [0, 0, 1, 1, 2, 2, 3, 3]
    for row in table:
        assert float(row["sampling.temperature"]) == float(row["temperature"])
        assert float(row["sampling.top_p"]) == float(row["top_p"])
        assert int(row["sampling.seed"]) == 41 + int(row["repeat"])  # run r uses seed S + r
        assert row["sampling.max_tokens"] == "8"
        assert row["sampling.system_prompt"] == settings.system_prompt
        assert (row["backend"], row["model"]) == ("local", settings.local_model_name)
        assert row["finish_reason"] in ("stop", "length")
        assert row["text"] and row["error"] == ""
        assert 0 < int(row["completion_tokens"]) <= 8
        assert float(row["queued_ms"]) == 0.0  # the local model ran them one at a time


def test_the_json_carries_the_same_replies_and_the_sweep_settings(
    fixed: FixedSweeps, settings: Settings
) -> None:
    saved = record(fixed.first / "sweep.json")
    assert saved["prompt"] == PROMPT
    assert (saved["backend"], saved["model"]) == ("local", settings.local_model_name)
    assert saved["grid"] == [
        {"name": "temperature", "values": [0.0, 1.2]},
        {"name": "top_p", "values": [0.5, 1.0]},
    ]
    assert (saved["repeats"], saved["seed"], saved["runs"], saved["stopped"]) == (2, 41, 8, False)
    assert saved["concurrency"] == 1  # the local model: one request at a time
    assert (
        saved["base"] == Sampling(max_tokens=8, system_prompt=settings.system_prompt).model_dump()
    )
    assert saved["started_at"] < saved["finished_at"]
    assert [cell["values"] for cell in saved["cells"]] == [
        {"temperature": t, "top_p": p} for t, p in itertools.product([0.0, 1.2], [0.5, 1.0])
    ]

    table = rows(fixed.first / "sweep.csv")
    assert len(saved["replies"]) == len(table) == 8
    for reply, row in zip(saved["replies"], table, strict=True):
        receipt = Receipt.model_validate(reply["receipt"])
        assert receipt.model_dump(mode="json") == reply["receipt"]  # the receipt round-trips
        assert (reply["cell"], reply["repeat"], reply["text"]) == (
            int(row["cell"]),
            int(row["repeat"]),
            row["text"],
        )
        assert reply["values"] == {
            "temperature": receipt.sampling["temperature"],
            "top_p": receipt.sampling["top_p"],
        }
        for name, value in reply["receipt"].items():
            if name == "sampling":
                for key, item in value.items():
                    assert row[f"sampling.{key}"] == as_csv(item)
            else:
                assert row[name] == as_csv(value)
        # Each reply's token records, as an export carries them (for its X-ray).
        records = TokenRecords.unpack(base64.b64decode(reply["tokens"]))
        drawn = records.rows["token"][: receipt.completion_tokens]
        assert b"".join(records.pieces[int(t)] for t in drawn).decode() == reply["text"]


def test_heatmaps_are_written_as_png_images(fixed: FixedSweeps) -> None:
    sizes = {}
    for name in PLOTS:
        path = fixed.first / name
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            sizes[name] = image.size
            assert image.width > 100 and image.height > 100
    # summary.png holds the three heatmaps side by side.
    assert sizes["summary.png"][0] > 2 * sizes["length.png"][0]


def test_a_fixed_seed_sweep_repeats_exactly(fixed: FixedSweeps) -> None:
    first = [row["text"] for row in rows(fixed.first / "sweep.csv")]
    second = [row["text"] for row in rows(fixed.second / "sweep.csv")]
    assert first == second


def test_a_greedy_cell_gives_the_same_reply_every_time(fixed: FixedSweeps) -> None:
    summary = rows(fixed.first / "summary.csv")
    assert list(summary[0]) == [
        "cell",
        "temperature",
        "top_p",
        "replies",
        "errors",
        "length",
        "distinct",
        "tokens_per_second",
    ]
    assert len(summary) == 4
    greedy = [cell for cell in summary if float(cell["temperature"]) == 0]
    assert [float(cell["distinct"]) for cell in greedy] == [0.5, 0.5]  # 1 text / 2 repeats
    for cell in summary:
        assert (cell["replies"], cell["errors"]) == ("2", "0")
        assert 0 < float(cell["length"]) <= 8
        assert float(cell["tokens_per_second"]) > 0
    cells = record(fixed.first / "sweep.json")["cells"]
    assert [c["distinct"] for c in cells] == [float(cell["distinct"]) for cell in summary]


def test_the_printed_summary_tables_the_cells_and_lists_the_files(fixed: FixedSweeps) -> None:
    lines = fixed.printed.splitlines()
    assert lines[0].startswith(f"Sweep of “{PROMPT}” on local:")
    assert "4 cells × 2 repeats, seeds 41+repeat; 8 runs in" in lines[0]
    assert lines[2].split() == [
        "temperature",
        "top_p",
        "replies",
        "errors",
        "length",
        "distinct",
        "tok/s",
    ]
    table = [line.split() for line in lines[3:7]]
    assert [(cells[0], cells[1]) for cells in table] == [
        ("0", "0.5"),
        ("0", "1"),
        ("1.2", "0.5"),
        ("1.2", "1"),
    ]
    assert [cells[5] for cells in table[:2]] == ["0.50", "0.50"]
    assert lines[8] == "Wrote:"
    assert sorted(Path(line.strip()).name for line in lines[9:]) == sorted(OUTPUTS)
    assert all(Path(line.strip()).parent == fixed.first for line in lines[9:])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grid", "tempreature=0.2,0.8"], "'tempreature' is not a sampling value a grid can"),
        (["--grid", "system_prompt=1"], "choose from temperature, top_p, min_p, max_tokens"),
        (["--grid", "temperature=0.2,3"], "--grid temperature=3: must be a number from 0 to 2"),
        (["--grid", "top_p=0.5,high"], "--grid top_p=high: 'high' is not a number"),
        (["--grid", "top_k=1.5"], "--grid top_k=1.5: must be a whole number from 0 to 200"),
        (["--grid", "temperature=nan"], "--grid temperature=nan: must be a number from 0 to 2"),
        (["--grid", "temperature"], "write it as NAME=V1,V2"),
        (["--grid", "temperature=0.2,,0.8"], "list the values, separated by commas"),
        (["--grid", "temperature=0.5,0.50"], "--grid temperature: 0.50 is listed twice"),
        (["--grid", "top_k=1", "--grid", "top_k=2"], "--grid top_k is given twice"),
        (["--grid", "temperature=1", "--temperature", "0.5"], "both set temperature"),
        (["--grid", "seed=1,2", "--seed", "3"], "--seed and --grid seed both set"),
        (["--max-tokens", "0"], "--max-tokens 0: must be a whole number from 1 to 4096"),
        (["--seed", "2147483647", "--repeats", "2"], "the seeds run up to 2147483648"),
        (["--repeats", "0"], "--repeats 0: a sweep needs at least one run per cell"),
        (["--profile", "nowhere:model"], "The backend 'nowhere' is not configured"),
        (["--profile", "local:missing"], "the local backend offers local:SmolLM2-135M"),
    ],
)
async def test_bad_input_is_refused_naming_the_option_before_anything_runs(
    settings: Settings, tmp_path: Path, argv: list[str], message: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(ChatLLMError) as refused:
        await sweep(settings, PROMPT, *argv, "--out", str(out), "--quiet")
    assert message in str(refused.value)
    assert not out.exists()


def test_python_m_chatllm_sweep_prints_the_summary_or_why_it_refused(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sweep", PROMPT, "--repeats", "1", "--max-tokens", "4", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "ok")], settings=settings) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith(f"Sweep of “{PROMPT}” on local:")
    assert printed.out.rstrip().endswith(str(tmp_path / "ok" / "summary.png"))

    bad = [*argv, "--grid", "top_p=0.5,2", "--out", str(tmp_path / "bad")]
    assert main(bad, settings=settings) == 1
    refused = capsys.readouterr()
    assert refused.err == "chatllm: --grid top_p=2: must be a number from 0 to 1\n"
    assert refused.out == ""


def test_seeds_follow_the_repeat_or_the_grid(settings: Settings) -> None:
    def seeds(*argv: str) -> list[int | None]:
        return [run.sampling.seed for run in plan_sweep(parse(PROMPT, *argv), settings).runs()]

    grid = ["--grid", "temperature=0.2,0.8", "--repeats", "3"]
    assert seeds(*grid, "--seed", "100") == [100, 101, 102] * 2
    assert seeds(*grid) == [None] * 6  # each run draws its own when it starts
    # A seed on the grid is the cell's seed, for every repeat of it.
    assert seeds("--grid", "seed=7,9", "--repeats", "2") == [7, 7, 9, 9]


async def test_an_earlier_sweep_is_overwritten_only_with_force(
    settings: Settings, tmp_path: Path
) -> None:
    argv = [PROMPT, "--repeats", "1", "--max-tokens", "4", "--out", str(tmp_path), "--quiet"]
    await sweep(settings, *argv)
    before = record(tmp_path / "sweep.json")
    with pytest.raises(ChatLLMError) as refused:
        await sweep(settings, *argv)
    assert str(refused.value).startswith(f"{tmp_path} already holds a sweep (sweep.csv, ")
    assert "pass --force to overwrite it" in str(refused.value)
    assert record(tmp_path / "sweep.json") == before

    await sweep(settings, *argv, "--force")
    after = record(tmp_path / "sweep.json")
    assert after["started_at"] > before["started_at"]
    assert len(after["replies"]) == 1


async def test_a_failed_run_is_recorded_and_the_sweep_goes_on(
    settings: Settings, tmp_path: Path
) -> None:
    # Room for 4096 reply tokens leaves none for the prompt in the 4096-token context.
    argv = ["--grid", "max_tokens=4,4096", "--repeats", "1", "--out", str(tmp_path), "--quiet"]
    printed = await sweep(settings, PROMPT, *argv)
    fits, overflows = rows(tmp_path / "sweep.csv")
    assert fits["finish_reason"] in ("stop", "length") and fits["text"]
    assert overflows["finish_reason"] == "error"
    assert overflows["text"] == ""
    assert "the context has room for 0" in overflows["error"]
    summary = rows(tmp_path / "summary.csv")
    assert [(c["replies"], c["errors"]) for c in summary] == [("1", "0"), ("0", "1")]
    assert summary[1]["length"] == summary[1]["distinct"] == ""
    assert printed.splitlines()[4].split() == ["4096", "0", "1", "—", "—", "—"]
    assert all((tmp_path / name).stat().st_size > 0 for name in PLOTS)


async def test_stopping_a_sweep_writes_the_runs_that_finished(
    settings: Settings, local: LocalBackend, tmp_path: Path
) -> None:
    plan = plan_sweep(
        parse(PROMPT, "--repeats", "4", "--max-tokens", "4", "--out", str(tmp_path)), settings
    )
    prepare_out(plan.out, force=False)
    finished: list[Reply] = []

    def stop_after_two(reply: Reply) -> None:
        finished.append(reply)
        if len(finished) == 2:
            task.cancel()  # what asyncio.run does on Ctrl-C

    task = asyncio.create_task(run_sweep(plan, local, on_reply=stop_after_two))
    with pytest.raises(SweepStopped) as stopped:
        await task
    assert str(stopped.value).startswith(
        "sweep stopped after 2 of 4 runs; what finished is written"
    )
    assert [row["repeat"] for row in rows(tmp_path / "sweep.csv")] == ["0", "1"]
    saved = record(tmp_path / "sweep.json")
    assert (saved["stopped"], saved["runs"], len(saved["replies"])) == (True, 4, 2)
    assert saved["cells"][0]["replies"] == 2
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_ctrl_c_in_a_terminal_stops_the_sweep_and_keeps_what_finished(tmp_path: Path) -> None:
    """A real SIGINT to the command's process group, as a terminal's Ctrl-C sends it."""
    out = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLLM_")}
    command = [sys.executable, "-m", "chatllm", "sweep", PROMPT]
    command += ["--repeats", "200", "--max-tokens", "4", "--seed", "1", "--out", str(out)]
    sweep = subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parent.parent,
        env={**env, "CHATLLM_DATA_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a process group of its own, as a shell's job
    )
    try:
        assert sweep.stderr is not None
        progress = b""
        while not re.search(rb" ([3-9]|\d\d+)/200 ", progress):  # a few runs done
            chunk = os.read(sweep.stderr.fileno(), 4096)
            assert chunk, f"the sweep ended early: {progress.decode(errors='replace')}"
            progress += chunk
        os.killpg(sweep.pid, signal.SIGINT)
        _, stderr = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 1
    said = stderr.decode()
    assert re.search(
        r"chatllm: sweep stopped after \d+ of 200 runs; what finished is written", said
    )
    finished = int(re.search(r"after (\d+) of", said)[1])  # type: ignore[index]
    assert 3 <= finished < 200
    assert len(rows(out / "sweep.csv")) == finished
    saved = record(out / "sweep.json")
    assert (saved["stopped"], saved["runs"], len(saved["replies"])) == (True, 200, finished)
    assert (out / "summary.png").stat().st_size > 0


async def test_progress_shows_on_stderr_and_seeds_are_fresh_without_seed(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [PROMPT, "--grid", "temperature=0.5", "--repeats", "3", "--max-tokens", "4"]
    await sweep(settings, *argv, "--out", str(tmp_path / "shown"))
    shown = capsys.readouterr()
    assert "3/3" in shown.err and "temperature=0.5" in shown.err
    assert shown.out == ""  # the summary is returned for the CLI to print, not printed here

    await sweep(settings, *argv, "--out", str(tmp_path / "quiet"), "--quiet")
    assert capsys.readouterr().err == ""

    seeds = [int(row["sampling.seed"]) for row in rows(tmp_path / "quiet" / "sweep.csv")]
    assert len(set(seeds)) == 3  # each run drew its own, and its receipt names it
    assert record(tmp_path / "quiet" / "sweep.json")["seed"] is None


async def test_a_chinese_prompt_sweeps_into_the_data_folder_and_renders(
    settings: Settings, tmp_path: Path
) -> None:
    own = settings.model_copy(update={"data_dir": tmp_path})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        printed = await sweep(
            own, "用一句話介紹台北。", "--repeats", "1", "--max-tokens", "4", "--quiet"
        )
    (folder,) = (tmp_path / "sweeps").iterdir()  # data/sweeps/<UTC time>
    assert folder.name.endswith("Z")
    assert sorted(path.name for path in folder.iterdir()) == sorted(OUTPUTS)
    assert f"  {folder / 'summary.png'}" in printed.splitlines()
    assert "1 cell × 1 repeat, random seeds; 1 run in" in printed
    assert "base" in printed  # the one cell, of no axes
    assert record(folder / "sweep.json")["prompt"] == "用一句話介紹台北。"
    installed = {font.name for font in font_manager.fontManager.ttflist}
    assert "Noto Sans CJK SC" in installed, "fonts-noto-cjk is missing (make test installs it)"
    assert not [w for w in caught if "missing from font" in str(w.message)]


@pytest.fixture
def openai_sweep_args(tmp_path: Path) -> list[str]:
    return [
        PROMPT,
        "--profile",
        "openai:smollm2",
        "--grid",
        "temperature=0,1",
        "--repeats",
        "2",
        "--max-tokens",
        "6",
        "--seed",
        "5",
        "--concurrency",
        "3",
        "--out",
        str(tmp_path),
        "--quiet",
    ]


async def test_an_endpoint_sweep_runs_concurrently_and_writes_in_grid_order(
    endpoint_settings: Settings, openai_sweep_args: list[str], tmp_path: Path
) -> None:
    printed = await sweep(endpoint_settings, *openai_sweep_args)
    table = rows(tmp_path / "sweep.csv")
    assert [(r["temperature"], r["repeat"], r["sampling.seed"]) for r in table] == [
        ("0.0", "0", "5"),
        ("0.0", "1", "6"),
        ("1.0", "0", "5"),
        ("1.0", "1", "6"),
    ]
    assert {(r["backend"], r["model"], r["finish_reason"] != "error") for r in table} == {
        ("openai", "smollm2", True)
    }
    assert table[0]["text"] == table[1]["text"]  # greedy
    saved = record(tmp_path / "sweep.json")
    assert (saved["backend"], saved["concurrency"]) == ("openai", 3)
    assert saved["cells"][0]["distinct"] == 0.5
    assert "on openai:smollm2: 2 cells × 2 repeats" in printed


# --------------------------------------------------------------------------------------
# Bounded concurrency, on a scripted model whose replies take known times


@dataclass
class Gauge:
    in_flight: int = 0
    peak: int = 0


class SlowEcho(BaseChatModel):
    """Answers with its seed after `pause` seconds, counting how many answer at once."""

    seed: int
    pause: float
    gauge: Gauge

    @property
    def _llm_type(self) -> str:
        return "slow-echo"

    def _reply(self) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(f"seed {self.seed}"))])

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        return self._reply()

    async def _agenerate(self, messages: list[BaseMessage], *args: Any, **kw: Any) -> ChatResult:
        self.gauge.in_flight += 1
        self.gauge.peak = max(self.gauge.peak, self.gauge.in_flight)
        try:
            await asyncio.sleep(self.pause)
        finally:
            self.gauge.in_flight -= 1
        return self._reply()


class SlowBackend(Backend):
    """An endpoint-like backend (not the local model) whose later runs answer sooner."""

    name = "slow"

    def __init__(self, settings: Settings, gauge: Gauge) -> None:
        super().__init__(settings)
        self.gauge = gauge

    async def models(self) -> list[str]:
        return ["echo"]

    def chat_model(self, model: str, sampling: Sampling) -> BaseChatModel:
        seed = sampling.seed or 0
        return SlowEcho(seed=seed, pause=max(0.0, 0.1 - 0.01 * seed), gauge=self.gauge)

    def context_tokens(self, model: str) -> int:
        return 4096

    def count_tokens(self, messages: Any) -> int:
        return sum(len(m.text.split()) + 4 for m in messages)

    def count_text(self, text: str) -> int:
        return len(text.split())


async def test_endpoint_runs_stay_within_the_concurrency_and_land_in_grid_order(
    settings: Settings, tmp_path: Path
) -> None:
    argv = ["--profile", "slow:echo", "--grid", "top_k=10,20", "--repeats", "3", "--seed", "0"]
    plan = plan_sweep(parse(PROMPT, *argv, "--concurrency", "2", "--out", str(tmp_path)), settings)
    prepare_out(plan.out, force=False)
    gauge = Gauge()
    done: list[str] = []
    await run_sweep(
        plan, SlowBackend(settings, gauge), quiet=True, on_reply=lambda r: done.append(r.text)
    )
    assert gauge.peak == 2
    written = [row["text"] for row in rows(tmp_path / "sweep.csv")]
    assert written == ["seed 0", "seed 1", "seed 2"] * 2
    assert done != written  # they finished in another order
