"""`python -m chatllm sweep PROMPT …`: one prompt over a grid of sampling values.

    python -m chatllm sweep "Name a colour." --grid temperature=0.2,0.8 --grid top_p=0.5,1 \\
        --repeats 3 --seed 1 --max-tokens 32 --profile local:SmolLM2-135M-Instruct

Each cell of the grid (one combination of the axes' values) runs `--repeats` times through
the app's own `Generation`, so a sweep measures exactly what a chat measures. The sweep
writes, to `--out` (default `data/sweeps/<UTC time>`):

- `sweep.csv` and `sweep.json`: one record per reply, its cell's values, the repeat, the
  text and the whole receipt; the JSON also holds the sweep's settings and cell summaries;
- `summary.csv`: per cell, the mean reply length, the share of distinct replies and the
  mean tokens/s;
- `length.png`, `distinct.png`, `tokens_per_second.png`: one heatmap per measure, rows the
  first axis's values, columns the combinations of the others; `summary.png`: all three.

With `--seed S`, run r of every cell uses seed S + r, so cells compare like with like and
the sweep repeats exactly; without it every run draws a seed (its receipt names it). A seed
put on the grid (`--grid seed=1,2`) is used as it is by every repeat of its cell. The local
model runs one request at a time; an endpoint gets up to `--concurrency` at once. A run
that fails is recorded with its error and the sweep goes on; Ctrl-C stops it, and what
finished is still written.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import itertools
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from chatllm.backends import Backend, Backends, ProfileSpec
from chatllm.clock import format_time
from chatllm.config import Settings
from chatllm.errors import ChatLLMError, InvalidSampling
from chatllm.generation import Generation
from chatllm.i18n import one_line
from chatllm.receipts import Receipt
from chatllm.sampling import NUMERIC_FIELDS, SEED_MAX, Sampling, option_name

log = logging.getLogger("chatllm")


Number = int | float

#: The sampling values a grid can vary: every numeric one, so a new knob is sweepable too.
GRID_FIELDS = NUMERIC_FIELDS

#: Every file a sweep writes; an output folder holding any of them is not overwritten
#: without --force.
OUTPUTS = (
    "sweep.csv",
    "sweep.json",
    "summary.csv",
    "length.png",
    "distinct.png",
    "tokens_per_second.png",
    "summary.png",
)


class SweepStopped(ChatLLMError):
    """The sweep was interrupted (Ctrl-C); what had finished was written."""


@dataclass(frozen=True)
class Metric:
    """One measure of a cell: its `CellSummary` attribute (and file stem) and its title."""

    key: str
    title: str
    places: int


METRICS = (
    Metric("length", "mean reply length (completion tokens)", 1),
    Metric("distinct", "share of distinct replies", 2),
    Metric("tokens_per_second", "mean tokens/s", 1),
)


@dataclass(frozen=True)
class Axis:
    """One sampling value the grid varies, and the values it takes, in the order given."""

    name: str
    values: tuple[Number, ...]


@dataclass(frozen=True)
class Cell:
    """One combination of the axes' values; `index` is its place in grid order."""

    index: int
    values: tuple[tuple[str, Number], ...]

    @property
    def label(self) -> str:
        return " ".join(f"{name}={number_text(value)}" for name, value in self.values) or "base"


@dataclass(frozen=True)
class Run:
    """One generation of the sweep: a cell's `repeat`-th reply, with its exact sampling."""

    cell: Cell
    repeat: int
    sampling: Sampling


@dataclass(frozen=True)
class Reply:
    """A finished run: its text (empty or partial if it failed) and its receipt."""

    cell: Cell
    repeat: int
    text: str
    receipt: Receipt
    #: its token records (the X-ray's: chatllm.xray.records' blob), where it has them
    tokens: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.receipt.finish_reason in ("stop", "length")


@dataclass(frozen=True)
class CellSummary:
    """A cell's measures over its successful replies (None where there were none):
    `distinct` is the distinct texts over the successful replies, which are the repeats
    unless some failed."""

    cell: Cell
    replies: int
    errors: int
    length: float | None
    distinct: float | None
    tokens_per_second: float | None

    def measure(self, metric: Metric) -> float | None:
        value: float | None = getattr(self, metric.key)
        return value


@dataclass(frozen=True)
class SweepPlan:
    """What to run: validated before anything runs, so a typo costs no generation."""

    prompt: str
    profile: ProfileSpec
    axes: tuple[Axis, ...]
    repeats: int
    base: Sampling
    #: With a seed, run r of every cell uses seed + r: cells compare like with like, and
    #: the sweep can be repeated exactly. Without one, every run draws its own.
    seed: int | None
    out: Path
    concurrency: int = 4

    def cells(self) -> list[Cell]:
        names = [axis.name for axis in self.axes]
        combinations = itertools.product(*(axis.values for axis in self.axes))
        return [
            Cell(index, tuple(zip(names, values, strict=True)))
            for index, values in enumerate(combinations)
        ]

    def runs(self) -> list[Run]:
        runs = []
        for cell in self.cells():
            for repeat in range(self.repeats):
                changes: dict[str, Any] = dict(cell.values)
                if self.seed is not None:
                    changes["seed"] = self.seed + repeat
                runs.append(Run(cell, repeat, self.base.update(changes)))
        return runs


# --------------------------------------------------------------------------------------
# Reading the command line


def _validated(base: Sampling, name: str, value: Any, where: str) -> Sampling:
    try:
        return base.update({name: value})
    except InvalidSampling as exc:
        reasons = "; ".join(problem.removeprefix(f"{name} ") for problem in exc.problems)
        raise ChatLLMError(f"{where}: {reasons}") from None


def _number(text: str, where: str) -> Number:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ChatLLMError(f"{where}: {text!r} is not a number") from None


def parse_axis(spec: str, base: Sampling) -> Axis:
    """One `--grid NAME=v1,v2,…`, each value validated as `Sampling` validates a slider."""
    raw_name, equals, listed = spec.partition("=")
    name = raw_name.strip().replace("-", "_")
    if not equals or not name:
        raise ChatLLMError(f"--grid {spec!r}: write it as NAME=V1,V2,… (e.g. temperature=0.2,0.8)")
    if name not in GRID_FIELDS:
        raise ChatLLMError(
            f"--grid {spec}: {raw_name.strip()!r} is not a sampling value a grid can vary; "
            f"choose from {', '.join(GRID_FIELDS)}"
        )
    texts = [text.strip() for text in listed.split(",")]
    if not all(texts):
        raise ChatLLMError(f"--grid {spec}: list the values, separated by commas")
    values: list[Number] = []
    for text in texts:
        where = f"--grid {name}={text}"
        value: Number = getattr(_validated(base, name, _number(text, where), where), name)
        if value in values:
            raise ChatLLMError(f"--grid {name}: {text} is listed twice")
        values.append(value)
    return Axis(name, tuple(values))


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def plan_sweep(args: argparse.Namespace, settings: Settings) -> SweepPlan:
    """The plan the options describe; every problem is a `ChatLLMError` naming its option."""
    if not args.prompt.strip():
        raise ChatLLMError("the prompt is empty")
    base = Sampling(system_prompt=settings.system_prompt)
    if args.system_prompt is not None:
        base = _validated(base, "system_prompt", args.system_prompt, "--system-prompt")
    for name in GRID_FIELDS:
        value = getattr(args, name, None)
        if name != "seed" and value is not None:
            base = _validated(base, name, value, f"{option_name(name)} {value}")
    axes = [parse_axis(spec, base) for spec in args.grid]
    names = [axis.name for axis in axes]
    for name in names:
        if names.count(name) > 1:
            raise ChatLLMError(f"--grid {name} is given twice; list all its values in one")
        if name != "seed" and getattr(args, name, None) is not None:
            raise ChatLLMError(f"{option_name(name)} and --grid {name} both set {name}; give one")
    if args.repeats < 1:
        raise ChatLLMError(f"--repeats {args.repeats}: a sweep needs at least one run per cell")
    if args.concurrency < 1:
        raise ChatLLMError(f"--concurrency {args.concurrency}: must be at least 1")
    if args.seed is not None:
        if "seed" in names:
            raise ChatLLMError("--seed and --grid seed both set the seeds; give one")
        _validated(base, "seed", args.seed, f"--seed {args.seed}")
        last = args.seed + args.repeats - 1
        if last > SEED_MAX:
            raise ChatLLMError(
                f"--seed {args.seed}: with {args.repeats} repeats the seeds run up to {last}, "
                f"above the largest seed, {SEED_MAX}"
            )
    profile = ProfileSpec.parse(args.profile or f"local:{settings.local_model_name}")
    if not profile.backend:
        raise ChatLLMError(f"--profile {args.profile!r}: write it as BACKEND:MODEL")
    return SweepPlan(
        prompt=args.prompt,
        profile=profile,
        axes=tuple(axes),
        repeats=args.repeats,
        base=base,
        seed=args.seed,
        out=args.out or settings.data_dir / "sweeps" / _timestamp(),
        concurrency=args.concurrency,
    )


async def choose_model(profile: ProfileSpec, backends: Backends) -> tuple[Backend, ProfileSpec]:
    """The backend of `profile`, and the profile with its model checked (or, when it names
    none and the backend offers just one, filled in)."""
    backend = backends.get(profile.backend)
    offered = await backend.models()
    if not profile.model and len(offered) == 1:
        return backend, ProfileSpec(profile.backend, offered[0])
    if profile.model not in offered:
        raise ChatLLMError(
            f"--profile {profile.name}: the {profile.backend} backend offers "
            f"{', '.join(f'{profile.backend}:{name}' for name in offered) or 'no models'}"
        )
    return backend, profile


def prepare_out(out: Path, *, force: bool) -> None:
    """Create the output folder; refuse one holding an earlier sweep unless `force`."""
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise ChatLLMError(
            f"{out} already holds a sweep ({', '.join(existing)}); pass --force to "
            "overwrite it, or choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ChatLLMError(f"cannot create {out}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------------------
# Running


class Sweep:
    """The runs of a plan on a backend. `replies` holds each finished run at its place in
    grid order, whatever order the runs finish in."""

    def __init__(self, plan: SweepPlan, backend: Backend) -> None:
        self.plan = plan
        self.backend = backend
        self.runs = plan.runs()
        self.replies: list[Reply | None] = [None] * len(self.runs)

    @property
    def concurrency(self) -> int:
        # The local model decodes one request at a time: more in flight would only wait in
        # its line. An endpoint may serve several at once.
        return 1 if self.backend.name == "local" else self.plan.concurrency

    async def run(
        self,
        on_start: Callable[[Run], None] | None = None,
        on_reply: Callable[[Reply], None] | None = None,
    ) -> None:
        """Run every run, at most `concurrency` at a time, starting them in grid order.
        Cancelling it cancels the runs in flight; those that finished stay in `replies`."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(index: int, run: Run) -> None:
            async with gate:
                if on_start is not None:
                    on_start(run)
                reply = await self._generate(run)
            self.replies[index] = reply
            if on_reply is not None:
                on_reply(reply)

        async with asyncio.TaskGroup() as group:
            for index, run in enumerate(self.runs):
                group.create_task(one(index, run))

    async def warm_up(self) -> None:
        """One short reply, not recorded, so the first cell does not pay alone for what a
        model's first request costs (loading the weights, setting up its buffers)."""
        sampling = self.plan.base.update({"max_tokens": 1})
        generation = Generation(self.backend, self.plan.profile.model, sampling)
        try:
            await generation.run([], self.plan.prompt)
        except ChatLLMError:  # a real problem shows in every run's receipt too
            log.warning("The sweep's warm-up reply failed", exc_info=True)

    async def _generate(self, run: Run) -> Reply:
        generation = Generation(self.backend, self.plan.profile.model, run.sampling)
        # A failed run is a result too: its receipt says "error" and why; the sweep goes on.
        with contextlib.suppress(ChatLLMError):
            await generation.run([], self.plan.prompt)
        records = generation.token_records()
        return Reply(
            run.cell,
            run.repeat,
            generation.text,
            generation.receipt(),
            records.pack() if records is not None else None,
        )

    def finished(self) -> list[Reply]:
        return [reply for reply in self.replies if reply is not None]


def summarize(cells: Sequence[Cell], replies: Sequence[Reply]) -> list[CellSummary]:
    """Each cell's measures over its successful replies."""
    by_cell: dict[int, list[Reply]] = {cell.index: [] for cell in cells}
    for reply in replies:
        by_cell[reply.cell.index].append(reply)
    summaries = []
    for cell in cells:
        mine = by_cell[cell.index]
        ok = [reply for reply in mine if reply.ok]
        lengths = [
            r.receipt.completion_tokens for r in ok if r.receipt.completion_tokens is not None
        ]
        rates = [r.receipt.tokens_per_second for r in ok if r.receipt.tokens_per_second is not None]
        summaries.append(
            CellSummary(
                cell=cell,
                replies=len(ok),
                errors=len(mine) - len(ok),
                length=statistics.fmean(lengths) if lengths else None,
                distinct=len({reply.text for reply in ok}) / len(ok) if ok else None,
                tokens_per_second=statistics.fmean(rates) if rates else None,
            )
        )
    return summaries


async def run_sweep(
    plan: SweepPlan,
    backend: Backend,
    *,
    quiet: bool = False,
    on_reply: Callable[[Reply], None] | None = None,
) -> str:
    """Run the sweep with a progress bar on stderr, write its files, and return the text
    summary. Cancelled (Ctrl-C), it writes what finished and raises `SweepStopped`."""
    sweep = Sweep(plan, backend)
    bar = tqdm(total=len(sweep.runs), desc="sweep", unit="run", file=sys.stderr, disable=quiet)
    started = datetime.now(UTC)
    clock = time.perf_counter()

    def starting(run: Run) -> None:
        bar.set_postfix_str(run.cell.label)

    def finishing(reply: Reply) -> None:
        bar.update()
        if on_reply is not None:
            on_reply(reply)

    stopped = False
    try:
        bar.set_postfix_str("warming up")
        await sweep.warm_up()
        started = datetime.now(UTC)
        clock = time.perf_counter()
        await sweep.run(starting, finishing)
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task. What finished is kept and written below.
        stopped = True
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    finally:
        bar.close()
    elapsed = time.perf_counter() - clock
    replies = sweep.finished()
    summaries = summarize(plan.cells(), replies)
    header = sweep_header(plan, summaries, started, datetime.now(UTC), sweep, stopped)
    paths = write_sweep(plan, replies, summaries, header)
    text = summary_text(plan, summaries, paths, elapsed, len(replies))
    if stopped:
        raise SweepStopped(
            f"sweep stopped after {len(replies)} of {len(sweep.runs)} runs; "
            f"what finished is written.\n{text}"
        )
    return text


async def sweep_command(args: argparse.Namespace, settings: Settings) -> str:
    """The `sweep` command: check everything, then run and write the sweep."""
    plan = plan_sweep(args, settings)
    backend, profile = await choose_model(plan.profile, Backends(settings))
    plan = replace(plan, profile=profile)
    prepare_out(plan.out, force=args.force)
    return await run_sweep(plan, backend, quiet=args.quiet)


# --------------------------------------------------------------------------------------
# Writing


def cell_fields(cell: Cell) -> dict[str, Any]:
    """Which cell a record is of: its number and its grid values."""
    return {"cell": cell.index, "values": dict(cell.values)}


def reply_record(reply: Reply) -> dict[str, Any]:
    """A reply as sweep.json holds it: the receipt nested as the app stores it, and its
    token records as a thread export carries them (base64), where it has them."""
    record = {
        **cell_fields(reply.cell),
        "repeat": reply.repeat,
        "text": reply.text,
        "receipt": reply.receipt.model_dump(mode="json"),
    }
    if reply.tokens is not None:
        record["tokens"] = base64.b64encode(reply.tokens).decode("ascii")
    return record


def reply_columns(plan: SweepPlan) -> list[str]:
    """sweep.csv's columns: the cell, its values, the repeat, the text, every receipt field
    (the sampling values flattened as `sampling.NAME`)."""
    columns = ["cell", *(axis.name for axis in plan.axes), "repeat", "text"]
    for name in Receipt.model_fields:
        if name == "sampling":
            columns.extend(f"sampling.{value}" for value in Sampling.model_fields)
        else:
            columns.append(name)
    return columns


def reply_row(reply: Reply) -> dict[str, Any]:
    row: dict[str, Any] = {"cell": reply.cell.index, **dict(reply.cell.values)}
    row.update(repeat=reply.repeat, text=reply.text)
    for name, value in reply.receipt.model_dump(mode="json").items():
        if name == "sampling":
            row.update({f"sampling.{key}": item for key, item in value.items()})
        elif isinstance(value, list):
            row[name] = " ".join(map(str, value))  # not_sent: names, one cell
        else:
            row[name] = value
    return row


def cell_record(summary: CellSummary) -> dict[str, Any]:
    return {
        **cell_fields(summary.cell),
        "replies": summary.replies,
        "errors": summary.errors,
        **{metric.key: _rounded(summary.measure(metric)) for metric in METRICS},
    }


def sweep_header(
    plan: SweepPlan,
    summaries: Sequence[CellSummary],
    started: datetime,
    finished: datetime,
    sweep: Sweep,
    stopped: bool,
) -> dict[str, Any]:
    """What sweep.json says about the sweep as a whole, before its replies."""
    return {
        "prompt": plan.prompt,
        "backend": plan.profile.backend,
        "model": plan.profile.model,
        "grid": [{"name": axis.name, "values": list(axis.values)} for axis in plan.axes],
        "repeats": plan.repeats,
        "seed": plan.seed,
        "base": plan.base.model_dump(),
        "concurrency": sweep.concurrency,
        "started_at": format_time(started),
        "finished_at": format_time(finished),
        "runs": len(sweep.runs),
        "stopped": stopped,
        "cells": [cell_record(summary) for summary in summaries],
    }


def write_sweep(
    plan: SweepPlan,
    replies: Sequence[Reply],
    summaries: Sequence[CellSummary],
    header: Mapping[str, Any],
) -> list[Path]:
    """Write every output file into `plan.out`; returns their paths."""
    out = plan.out
    try:
        with (out / "sweep.csv").open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=reply_columns(plan))
            writer.writeheader()
            writer.writerows(reply_row(reply) for reply in replies)
        record = {**header, "replies": [reply_record(reply) for reply in replies]}
        (out / "sweep.json").write_text(
            json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        with (out / "summary.csv").open("w", newline="", encoding="utf-8") as file:
            fields = ["cell", *(a.name for a in plan.axes), "replies", "errors"]
            writer = csv.DictWriter(file, fieldnames=fields + [m.key for m in METRICS])
            writer.writeheader()
            for summary in summaries:
                row = cell_record(summary)
                values = row.pop("values")
                writer.writerow({**row, **values})
        from chatllm.plots import write_plots  # matplotlib loads only when a sweep ends

        plots = write_plots(plan, summaries)
    except OSError as exc:
        raise ChatLLMError(f"cannot write the sweep to {out}: {exc.strerror or exc}") from exc
    return [out / "sweep.csv", out / "sweep.json", out / "summary.csv", *plots]


def summary_text(
    plan: SweepPlan,
    summaries: Sequence[CellSummary],
    paths: Sequence[Path],
    elapsed: float,
    finished: int,
) -> str:
    """The command's answer: what ran, a table of the cells' measures, the files."""
    seeds = f"seeds {plan.seed}+repeat" if plan.seed is not None else "random seeds"
    lines = [
        f"Sweep of “{one_line(plan.prompt, 60)}” on {plan.profile.name}: "
        f"{plural(len(summaries), 'cell')} × {plural(plan.repeats, 'repeat')}, {seeds}; "
        f"{plural(finished, 'run')} in {elapsed:.1f} s",
        "",
    ]
    names = [axis.name for axis in plan.axes] or ["cell"]
    table = [[*names, "replies", "errors", "length", "distinct", "tok/s"]]
    for summary in summaries:
        values = [number_text(value) for _, value in summary.cell.values] or [summary.cell.label]
        measures = [
            "—" if (value := summary.measure(m)) is None else f"{value:.{m.places}f}"
            for m in METRICS
        ]
        table.append([*values, str(summary.replies), str(summary.errors), *measures])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines.extend("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table)
    lines.extend(["", "Wrote:", *(f"  {path}" for path in paths)])
    return "\n".join(lines)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def number_text(value: Number) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
