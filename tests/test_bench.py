"""The benchmarks still run: each in a short mode, as `make bench` would run it, checking what
it measured and compared — never its figures, which are for bench/ on a quiet machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def bench(script: str, *args: str, out: Path) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)],
        cwd=ROOT,
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    figures: dict[str, Any] = json.loads(out.read_text("utf-8"))
    return figures


def test_the_streaming_benchmark_compares_the_app_with_raw_llama_cpp(tmp_path: Path) -> None:
    figures = bench("stream.py", "--rounds", "1", "--max-tokens", "24", out=tmp_path / "s.json")
    runs = figures["runs"]
    assert {"A raw llama-cpp-python", "B app chain + Chainlit"} <= set(runs)
    for kept in runs.values():
        (run,) = kept  # one measured round after the warm-up
        assert run["tokens"] == 24 and run["rate"] > 0 and run["ttft_ms"] > 0
    assert figures["app_rate_pct_of_raw"] > 0
    assert set(figures["pass"]) == {"rate", "ttft"}
    assert "D app, X-ray off" in runs  # the app recording tokens for the X-ray, and not
    assert figures["app_xray_off_rate_pct_of_raw"] > 0
    assert figures["xray_bytes_per_token"] == 12 + 8 * 10  # a record of 10 candidates
    assert figures["xray_stored_bytes_per_token"] > 0
    assert figures["xray_load_ms"] > 0 and figures["xray_page_kb"] > 0


def test_the_store_writes_benchmark_compares_statements_made_once_with_text_each_time(
    tmp_path: Path,
) -> None:
    figures = bench("store_writes.py", "--rounds", "1", "--writes", "20", out=tmp_path / "w.json")
    (result,) = figures["dialects"].values()
    assert set(figures["dialects"]) == {"sqlite"}
    assert set(result["ms_per_write"]) == {"made once", "text() each time"}
    for way in result["ms_per_write"].values():
        assert set(way) == {"message", "step"} and all(ms > 0 for ms in way.values())
    assert set(result["ratio"]) == {"message", "step"}


def test_the_thread_list_benchmark_compares_the_store_with_chainlits(tmp_path: Path) -> None:
    figures = bench(
        "threads.py",
        *("--sizes", "1000", "--ref-sizes", "1000", "--repeat", "2", "--budget", "2"),
        *("--workdir", str(tmp_path / "work")),
        out=tmp_path / "t.json",
    )
    # Both data layers answered the same pages and searches on the same data.
    assert figures["same_results"] == {
        "page1": True,
        "page2": True,
        "search_en": True,
        "search_zh": True,
    }
    assert set(figures["ratios"]) == {"page1", "page2", "open200", "search_en", "search_zh"}
    assert {run["measured"]["kind"] for run in figures["runs"]} == {"app", "chainlit"}
    # The app's layer ran on PostgreSQL too, on the same data, and answered every call
    # (pages, the 200-step thread, each search) with the same threads as on SQLite.
    assert {(run["measured"]["kind"], run["measured"]["dialect"]) for run in figures["runs"]} == {
        ("app", "sqlite"),
        ("app", "postgresql"),
        ("chainlit", "sqlite"),
    }
    same_on_postgresql = figures["postgresql_same_results"]["1000"]
    assert {"page1", "page2", "page_mid", "search_en", "search_zh"} <= set(same_on_postgresql)
    assert all(same_on_postgresql.values()), same_on_postgresql
    for run in figures["runs"]:
        if run["measured"]["kind"] == "app":
            assert run["measured"]["counts"]["open200"] == 200
            assert run["seed"]["threads"] == 1001 and run["seed"]["steps"] == 20_200
    assert {label.split(":")[0] for label in figures["targets"]} == {"SQLite", "PostgreSQL"}


def test_the_durability_check_kills_the_app_and_finds_every_acknowledged_message(
    tmp_path: Path,
) -> None:
    """One SIGKILL round of the app, two of the data layer alone, and two chats at once: what
    it checks holds (nothing acknowledged lost, the database intact, every chat answered),
    not how fast."""
    out = tmp_path / "d.json"
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "durability.py")),
            *("--rounds", "1", "--chats", "2", "--layer-rounds", "2", "--parallel", "2"),
            *("--json", str(out)),
        ],
        cwd=ROOT,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    figures = json.loads(out.read_text("utf-8"))
    assert done.returncode == 0, figures
    kill = figures["kill"]
    assert kill["rounds"] == 1 and kill["acknowledged"] > 0
    assert kill["found"] == kill["acknowledged"] and kill["lost"] == 0
    assert kill["integrity"] == "ok"
    layer = figures["layer"]
    assert layer["rounds"] == 2 and layer["acknowledged"] > 0
    assert layer["found"] == layer["acknowledged"] and layer["lost"] == 0
    assert layer["integrity"] == "ok"
    assert figures["parallel"]["answered"] == figures["parallel"]["chats"] == 2


def test_the_load_benchmark_measures_users_on_one_worker_and_on_two_behind_nginx(
    tmp_path: Path,
) -> None:
    """Two users, two short replies each, on SQLite and on two workers behind nginx: it
    prints its table, every turn's tokens come back stamped, and every message and reply
    is found stored once (how fast is for bench/ on a quiet machine)."""
    out = tmp_path / "l.json"
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "load.py"), "--setup", "sqlite1,pg2"),
            *("--users", "2", "--messages", "2", "--tokens", "5", "--json", str(out)),
        ],
        cwd=ROOT,
        timeout=300,
        capture_output=True,
        text=True,
    )
    figures = json.loads(out.read_text("utf-8"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "+TTFT ms" in done.stdout and "verdict" in done.stdout
    assert [(run["setup"], run["users"]) for run in figures["runs"]] == [
        ("sqlite1", 2),
        ("pg2", 2),
    ]
    for run in figures["runs"]:
        assert run["ramp_s"] == 0.1  # users start over one reply's length: 5 tokens, 20 ms
        assert run["turns"] == 4 and run["errors"] == 0 and run["stored_once"]
        assert run["added_ttft_ms"]["p95"] is not None and run["token_added_ms"]["p95"] >= 0
        # Each user's first turn apart from the later ones (two users, two turns each).
        assert run["added_ttft_first_turns_ms"]["p95"] is not None
        assert run["added_ttft_later_turns_ms"]["p95"] is not None
        assert run["writes"]["user_message"]["max"] >= 1 and run["writes"]["reply"]["max"] >= 1
    # PostgreSQL's own counts, read once the workers have stopped.
    assert figures["runs"][1]["tuple_writes"]["steps"]["ins"] > 0


def test_the_stream_cpu_benchmark_measures_the_app_beside_chatopenai(tmp_path: Path) -> None:
    figures = bench(
        "stream_cpu.py",
        "--rounds",
        "2",
        "--tokens",
        "6",
        "--interval-ms",
        "1",
        out=tmp_path / "c.json",
    )
    paths = {"app", "app model", "ChatOpenAI", "openai", "httpx"}
    assert set(figures["cpu_ms_per_reply"]) == paths and figures["tokens"] == 6
    assert all(ms > 0 for ms in figures["cpu_ms_per_reply"].values())
    assert figures["app_model_pct_of_chatopenai"] > 0


def test_the_thread_count_benchmark_runs_each_count_and_marks_the_default(
    tmp_path: Path,
) -> None:
    from chatllm.engine.cpus import default_threads

    figures = bench("cpu_threads.py", "--rounds", "1", "--max-tokens", "8", out=tmp_path / "t.json")
    rows = figures["rows"]
    assert [row["threads"] for row in rows] == list(range(1, len(rows) + 1))
    assert all(row["tokens_per_s"] > 0 and row["ttft_ms"] > 0 for row in rows)
    assert figures["default"] == default_threads()


def test_the_first_reply_benchmark_compares_a_fresh_starts_first_question(tmp_path: Path) -> None:
    short = ("--rounds", "1", "--questions", "2", "--words", "5")
    figures = bench("first_reply.py", *short, out=tmp_path / "f.json")
    assert figures["cold"] is False  # warmed as the app warms it
    assert figures["first_ttft_ms"] > 0 and figures["later_ttft_ms"] > 0
    assert figures["ratio"] > 0 and isinstance(figures["pass"], bool)


def test_the_startup_benchmark_starts_both_apps_and_measures_page_model_and_memory(
    tmp_path: Path,
) -> None:
    figures = bench("startup.py", "--rounds", "1", out=tmp_path / "st.json")
    (bare,), (app,) = figures["runs"]["bare"], figures["runs"]["app"]
    assert bare["first_page_s"] > 0 and app["first_page_s"] > 0
    assert app["model_ready_s"] > 0 and bare["model_ready_s"] is None
    assert bare["can_type_s"] > bare["first_page_s"] and app["can_type_s"] > app["first_page_s"]
    assert app["engine_ready_s"] > 0 and app["chat_loaded_s"] > 0
    assert isinstance(figures["pass"], bool) and figures["first_page_ratio"] > 0
    assert app["web_rss_mb"] > 0 and app["engine_rss_mb"] > 0 and bare["engine_rss_mb"] == 0
    assert figures["sizes"]["model_file_mb"] > 0 and figures["sizes"]["kv_cache_mb"] > 0
