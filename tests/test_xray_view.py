"""The sampling X-ray on the page (issue 27): the chain the page runs (a port inside
public/elements/XRay.jsx) gives what chatllm.xray.chain gives on the same inputs, run in
Node (installed for axe-core); and a reply's X-ray button sends the view that reads its
records, or says there are none."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import chainlit as cl
from chainlit.types import ThreadDict

from chatllm.chat import ChatApp
from chatllm.xray.chain import Candidate, ChainSettings, run
from tests.support import BrowserTab, open_chat, say
from tests.test_xray_chain import random_cases

VIEW = Path(__file__).resolve().parent.parent / "public" / "elements" / "XRay.jsx"
PAGE_CHAIN = re.compile(r"// ---- the chain.*?\n(.*?)// ---- end of the chain", re.S)

RUNNER = """
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
%s
const out = input.map(([candidates, settings, history]) => {
  const r = CHAIN.run(candidates.map(([id, logit]) => ({ id, logit })), settings, history);
  return { mode: r.mode, kept: r.kept, cutBy: r.cutBy, probabilities: r.probabilities };
});
process.stdout.write(JSON.stringify(out));
"""


Case = tuple[list[Candidate], ChainSettings, list[int]]


def page_chain(cases: list[Case], view: Path = VIEW) -> list[Any]:
    node = shutil.which("node") or shutil.which("nodejs")
    assert node, "no Node: `make test` installs it (Debian's nodejs, for axe-core)"
    match = PAGE_CHAIN.search(view.read_text("utf-8"))
    assert match, "XRay.jsx has no marked chain"
    payload = [
        ([[c.id, c.logit] for c in candidates], settings.__dict__, history)
        for candidates, settings, history in cases
    ]
    done = subprocess.run(
        [node, "-e", RUNNER % match.group(1)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: list[Any] = json.loads(done.stdout)
    return result


def test_the_page_runs_the_same_chain_as_the_app() -> None:
    cases: list[Case] = list(random_cases(2027, 1500))
    for n, (case, page) in enumerate(zip(cases, page_chain(cases), strict=True)):
        ours = run(*case)
        assert page["mode"] == ours.mode, n
        assert {s: set(ids) for s, ids in page["kept"].items()} == {
            s: set(ids) for s, ids in ours.kept.items()
        }, n
        assert {int(i): s for i, s in page["cutBy"].items()} == ours.cut_by, n
        probabilities = {int(i): p for i, p in page["probabilities"].items()}
        assert probabilities.keys() == ours.probabilities.keys(), n
        for token, p in ours.probabilities.items():
            assert math.isclose(probabilities[token], p, rel_tol=1e-9, abs_tol=1e-12), n


def test_the_page_chain_goes_red_when_a_stage_differs(tmp_path: Path) -> None:
    """Not vacuous: the same comparison on a copy of the view whose top_p stops one
    candidate late finds the difference."""
    broken = VIEW.read_text("utf-8").replace("if (total >= p && n + 1", "if (total > p && n + 1")
    assert broken != VIEW.read_text("utf-8")
    copy = tmp_path / "XRay.jsx"
    copy.write_text(broken, "utf-8")
    cases: list[Case] = [
        ([Candidate(i, 0.5) for i in range(4)], ChainSettings(top_k=0, top_p=0.5), [])
    ]
    (page,) = page_chain(cases, copy)
    assert len(page["kept"]["top_p"]) != len(run(*cases[0]).kept["top_p"])


async def test_a_replys_xray_button_sends_the_view_that_reads_its_records(
    app: ChatApp,
) -> None:
    tab = BrowserTab()
    await open_chat(app, tab)
    await app.update_settings({"max_tokens": 6, "temperature": 0.3, "top_p": 0.8})
    await say(app, tab, "Name a colour.")
    thread: ThreadDict | None = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    (reply,) = [s for s in thread["steps"] if s["type"] == "assistant_message"]
    tab.enter()
    await app.xray(_action("xray", reply["id"]))
    (view,) = [e for e in tab.payloads("element") if e.get("name") == "XRay"]
    assert view["forId"] == reply["id"]
    props = view["props"]
    assert props["url"] == f"/chatllm/xray/{thread['id']}/{reply['id']}"
    # The reply's own settings, as its receipt has them, for the sliders to start from.
    made = reply["metadata"]["receipt"]["sampling"]
    assert props["sampling"]["top_p"] == made["top_p"] == 0.8
    assert props["sampling"]["min_p"] == made["min_p"]
    assert props["labels"]["reset"] == "Back to the reply's settings"
    # A reply with no records (one written before them, say) says so instead.
    await app.store.db.execute("DELETE FROM token_records")
    await app.xray(_action("xray", reply["id"]))
    assert "no token records" in tab.payloads("toast")[-1]["message"]
    assert len([e for e in tab.payloads("element") if e.get("name") == "XRay"]) == 1


def _action(name: str, step: str) -> cl.Action:
    return cl.Action(name=name, payload={"step": step})
