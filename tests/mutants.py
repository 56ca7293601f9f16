"""A small mutation check: does a test go red when a line of the code changes?

For each module below, every mutant (one small change: a comparison flipped, `and` for `or`,
a number moved by one, a boolean negated, a statement removed, ...) is written over the
module in turn, and the module's fast tests run against it. A mutant the tests fail on is
killed; one they pass on survived, and is a promise no test holds (or a change that makes
no difference, which the report should then say). The module is restored after each run.

    .venv/bin/python tests/mutants.py [--module sampling] [--limit 50]    # make mutants
    .venv/bin/python tests/mutants.py --module document --line 194       # one line's

Writes `artifacts/mutants.md` (survivors with their line) and prints a summary. Written
here rather than taken from mutmut: mutmut 3 rewrites the whole package into a `mutants/`
tree and runs it from there, which the app's Chainlit config (read from the working
directory) and the engine process (`python -m chatllm.engine.worker`) do not survive.
"""

from __future__ import annotations

import argparse
import ast
import copy
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "artifacts" / "mutants.md"

#: The modules with fast tests, and those tests.
TARGETS: dict[str, tuple[str, list[str]]] = {
    "sampling": ("chatllm/sampling.py", ["tests/test_sampling.py"]),
    "chain": ("chatllm/chain.py", ["tests/test_chain.py"]),
    "history": (
        "chatllm/conversation/marks.py",
        "chatllm/conversation/memory.py",
        ["tests/test_history.py", "tests/test_resume.py", "tests/test_comparing.py"],
    ),
    "receipts": ("chatllm/receipts.py", ["tests/test_generation.py", "tests/test_comparing.py"]),
    "search": ("chatllm/store/search.py", ["tests/test_store.py"]),
    "document": ("chatllm/export.py", ["tests/test_transfer.py", "tests/test_importing.py"]),
    "markdown": ("chatllm/markdown.py", ["tests/test_transfer.py"]),
}

SWAPS: dict[type[ast.AST], type[ast.AST]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.And: ast.Or,
    ast.Or: ast.And,
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
}


@dataclass(frozen=True)
class Mutant:
    line: int
    what: str
    tree: ast.Module


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (left alone)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def mutants(source: str) -> Iterator[Mutant]:
    """Every single-change mutant of `source`."""
    original = ast.parse(source)
    skip = docstrings(original)
    lines = source.splitlines()
    places = [n for n in ast.walk(original) if hasattr(n, "lineno")]
    for index, node in enumerate(places):
        line = node.lineno  # type: ignore[attr-defined]
        if "pragma: no mutate" in lines[line - 1] or id(node) in skip:
            continue
        for what, change in changes(node):
            tree = copy.deepcopy(original)
            target = [n for n in ast.walk(tree) if hasattr(n, "lineno")][index]
            if change(target):
                yield Mutant(line, what, ast.fix_missing_locations(tree))


def changes(node: ast.AST):  # type: ignore[no-untyped-def]
    """(description, a function applying the change to the copy's node) for `node`."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in SWAPS:
                new = SWAPS[type(op)]

                def swap(n: ast.AST, i: int = i, new: type[ast.AST] = new) -> bool:
                    n.ops[i] = new()  # type: ignore[attr-defined]
                    return True

                yield f"{type(op).__name__} → {new.__name__}", swap
    if isinstance(node, ast.BoolOp | ast.BinOp) and type(node.op) in SWAPS:
        new = SWAPS[type(node.op)]

        def swap_op(n: ast.AST, new: type[ast.AST] = new) -> bool:
            n.op = new()  # type: ignore[attr-defined]
            return True

        yield f"{type(node.op).__name__} → {new.__name__}", swap_op
    if isinstance(node, ast.Constant) and not isinstance(node.value, str | bytes):
        value = node.value
        if isinstance(value, bool):
            yield f"{value} → {not value}", lambda n: setattr(n, "value", not value) or True
        elif isinstance(value, int | float) and value is not None:
            yield f"{value} → {value + 1}", lambda n: setattr(n, "value", value + 1) or True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "not removed", lambda n: _replace_with(n, n.operand)  # type: ignore[attr-defined]
    if isinstance(node, ast.If):
        yield "if condition negated", lambda n: _negate(n)
    returns_none = isinstance(node, ast.Return) and (
        node.value is None or (isinstance(node.value, ast.Constant) and node.value.value is None)
    )
    if isinstance(node, ast.Return) and not returns_none:
        yield "returns None", lambda n: setattr(n, "value", ast.Constant(None)) or True
    if isinstance(node, ast.Expr | ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Raise):
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            yield "statement removed", lambda n: _replace_with(n, ast.Pass())


def _negate(node: ast.AST) -> bool:
    node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)  # type: ignore[attr-defined]
    return True


def _replace_with(node: ast.AST, new: ast.AST) -> bool:
    """Make `node` become `new` in place (its parent keeps pointing at the same object)."""
    node.__class__ = new.__class__
    node.__dict__.clear()
    node.__dict__.update(new.__dict__)
    return True


def run_tests(tests: list[str], timeout: float) -> bool:
    """Whether the tests pass (the mutant survived)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False  # a mutant that hangs the tests is caught by them
    return done.returncode == 0


def section(
    name: str,
    module: str,
    tests: list[str],
    lines: list[str],
    survivors: list[Mutant],
    run: int,
) -> tuple[str, list[str]]:
    """A module's total and its survivors' lines after the first `run` of its mutants."""
    total = f"{name}: {run - len(survivors)} of {run} killed"
    listed = [f"- line {m.line}: {m.what} — `{lines[m.line - 1].strip()}`" for m in survivors]
    return total, [f"## {module} ({', '.join(tests)})", "", *(listed or ["- none"]), ""]


def write_report(totals: list[str], report: list[str]) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(["\n".join(totals), "", *report]), "utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", choices=sorted(TARGETS))
    parser.add_argument("--limit", type=int, default=0, help="at most this many per module")
    parser.add_argument(
        "--line", type=int, action="append", help="only the mutants of this line (repeatable)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per test run")
    args = parser.parse_args()
    report = ["# Surviving mutants", ""]
    totals: list[str] = []
    for name in args.module or sorted(TARGETS):
        module, tests = TARGETS[name]
        path = ROOT / module
        source = path.read_text("utf-8")
        if not run_tests(tests, args.timeout):
            print(f"{name}: the tests fail without any mutant; fix them first", file=sys.stderr)
            return 2
        found = sorted(mutants(source), key=lambda mutant: mutant.line)
        if args.line:
            found = [mutant for mutant in found if mutant.line in args.line]
        if args.limit and len(found) > args.limit:
            # Spread over the whole module (a step rounded down, then cut, never reached
            # its end).
            found = [found[i * len(found) // args.limit] for i in range(args.limit)]
        survivors: list[Mutant] = []
        began = time.monotonic()
        lines = source.splitlines()
        try:
            for number, mutant in enumerate(found, 1):
                path.write_text(ast.unparse(mutant.tree) + "\n", "utf-8")
                if run_tests(tests, args.timeout):
                    survivors.append(mutant)
                print(
                    f"\r{name}: {number}/{len(found)} run, {len(survivors)} survived",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
                # Written after every mutant, so that a run stopped early still says how
                # far it got and what survived until then.
                total, listed = section(name, module, tests, lines, survivors, number)
                total += f" ({time.monotonic() - began:.0f} s, {number} of {len(found)} run)"
                write_report([*totals, total], [*report, *listed])
        finally:
            path.write_text(source, "utf-8")
        print(file=sys.stderr)
        total, listed = section(name, module, tests, lines, survivors, len(found))
        totals.append(f"{total} ({time.monotonic() - began:.0f} s)")
        report += listed
    write_report(totals, report)
    print("\n".join(totals))
    print(f"survivors: {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
