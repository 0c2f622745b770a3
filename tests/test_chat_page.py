"""The chat page of ``subterra serve``: the flowchart's layout (``subterra.flowchart``), and the page
itself in a real headless Chromium against a live server with a trained tiny model."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving_fixtures import live_server  # noqa: F401
from subterra.flowchart import flowchart, layers
from subterra.workflow import Workflow, load_workflow

HERE = Path(__file__).parent
MINI = HERE / "fixtures" / "mini_booking.yaml"
PAGE = HERE.parent / "subterra" / "web" / "chat.html"
SHIPPED = sorted((HERE.parent / "data" / "workflows").glob("*.yaml"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]



def assert_laid_out(wf: Workflow, chart: dict) -> None:
    """Every node and edge is there, in boxes inside the drawing that do not overlap, a layer
    further down for each move from the start."""
    assert {n["id"] for n in chart["nodes"]} == set(wf.nodes)
    assert len(chart["nodes"]) == len(wf.nodes)
    assert [(e["source"], e["target"], e["when"]) for e in chart["edges"]] == [(e.source, e.target, e.when) for e in wf.edges]
    w, h = chart["node_width"], chart["node_height"]
    for n in chart["nodes"]:
        assert 0 <= n["x"] and n["x"] + w <= chart["width"], n
        assert 0 <= n["y"] and n["y"] + h <= chart["height"], n
        assert n["end"] == wf.nodes[n["id"]].end and n["prompt"] == wf.nodes[n["id"]].prompt
    for a, b in itertools.combinations(chart["nodes"], 2):
        apart = a["x"] + w <= b["x"] or b["x"] + w <= a["x"] or a["y"] + h <= b["y"] or b["y"] + h <= a["y"]
        assert apart, f"{a['id']} and {b['id']} overlap"
    y_of = {n["layer"]: n["y"] for n in chart["nodes"]}
    for n in chart["nodes"]:
        assert n["y"] == y_of[n["layer"]]  # one row per layer
    assert sorted(y_of.values()) == [y_of[k] for k in sorted(y_of)]  # layers go down
    start = next(n for n in chart["nodes"] if n["id"] == wf.start)
    assert start["layer"] == 0 and all(n["y"] > start["y"] for n in chart["nodes"] if n is not start)


def test_flowchart_of_mini_booking():
    wf = load_workflow(MINI)
    chart = flowchart(wf)
    assert chart["workflow"] == "mini_booking" and chart["title"] == "Mini booking" and chart["start"] == "greet"
    assert_laid_out(wf, chart)
    layer = {n["id"]: n["layer"] for n in chart["nodes"]}
    assert layer == {"greet": 0, "ask_date": 1, "ask_count": 2, "confirm": 3, "cancel": 3, "human": 3, "done": 4}
    x = {n["id"]: n["x"] for n in chart["nodes"]}
    assert x["confirm"] < x["cancel"] < x["human"]  # the branches in the workflow's order
    assert x["done"] == x["confirm"]  # under its only parent
    json.dumps(chart)  # served as is


def test_flowchart_is_deterministic():
    first = flowchart(load_workflow(MINI))
    assert flowchart(load_workflow(MINI)) == first
    code = ("import json, sys; from subterra.flowchart import flowchart; from subterra.workflow import load_workflow; "
            "print(json.dumps(flowchart(load_workflow(sys.argv[1])), sort_keys=True))")
    for seed in ("0", "12345"):  # nothing depends on set or hash order
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code, str(MINI)], env=env, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == first


def test_flowchart_with_loops_back_edges_and_long_edges():
    wf = Workflow.from_dict({"workflow": "loops", "assistant": "A test.", "start": "a", "nodes": {
        "a": {"prompt": "A.", "branches": [{"to": "b", "when": "on"}, {"to": "d", "when": "skip"}]},
        "b": {"prompt": "B.", "branches": [{"to": "c", "when": "on"}, {"to": "b", "when": "again"}]},
        "c": {"prompt": "C.", "branches": [{"to": "a", "when": "from the top"}, {"to": "d", "when": "on"}, {"to": "b", "when": "back"}]},
        "d": {"prompt": "D.", "end": "success"},
        "lost": {"prompt": "Unreachable.", "end": "abandoned"},
    }})
    assert layers(wf) == {"a": 0, "b": 1, "d": 1, "c": 2, "lost": 3}  # shortest distances; back edges change nothing
    assert_laid_out(wf, flowchart(wf))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_flowchart_of_the_shipped_workflows(path):
    wf = load_workflow(path)
    assert_laid_out(wf, flowchart(wf))


def test_page_is_self_contained():
    html = PAGE.read_text(encoding="utf-8")
    for element in ('id="workflow"', 'id="message"', 'id="send"', 'id="restart"', 'id="transcript"', 'id="form"',
                    'id="flowchart"', 'id="ended"', 'id="error"'):
        assert element in html
    outside = [u for u in ("http://", "https://", "//cdn", "<link rel=\"stylesheet\"", "<script src") if u in html.replace(
        "http://www.w3.org/2000/svg", "")]
    assert not outside, f"the page reaches outside: {outside}"


# ----------------------------------------------------------------------------------- the browser
REPLIES = {  # the step the conversation is at -> what the traveller says there
    "": "I'd like to go to Lisbon.",
    "greet": "I'd like to go to Lisbon.",
    "ask_date": "On 2027-03-14.",
    "ask_count": "Cancel everything.",
    "confirm": "No thanks.",
}
MAX_TURNS = 12


@pytest.fixture
def browser_page():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()


def test_chat_page_in_a_browser(live_server, browser_page, tmp_path):
    page, script_errors = browser_page
    chart = flowchart(load_workflow(MINI))
    known = {n["id"] for n in chart["nodes"]}

    page.goto(live_server.url.rstrip("/") + "/")
    page.wait_for_selector("#workflow option[value='mini_booking']", state="attached")
    page.select_option("#workflow", "mini_booking")
    page.wait_for_selector("#flowchart g.node[data-node='greet']")
    assert sorted(page.eval_on_selector_all("#flowchart g.node", "gs => gs.map(g => g.dataset.node)")) == sorted(known)
    assert page.locator("#flowchart g.edge").count() == len(chart["edges"])
    assert page.locator("#flowchart g.node.current").count() == 0  # nothing said yet
    assert not page.is_visible("#ended") and not page.is_visible("#error")

    turns, node = [], ""
    for turn in range(1, MAX_TURNS + 1):
        text = REPLIES.get(node, "Cancel everything.")
        page.fill("#message", text)
        page.click("#send")
        page.wait_for_function(
            "n => document.querySelectorAll('#transcript .msg.assistant:not(.pending)').length >= n"
            " || !document.getElementById('error').hidden", arg=turn)
        assert not page.is_visible("#error"), page.inner_text("#error")
        # the turn's form: a node of the flowchart, highlighted there, and shown under the answer
        node = page.inner_text("#form-node")
        assert node in known
        current = page.eval_on_selector_all("#flowchart g.node.current", "gs => gs.map(g => g.dataset.node)")
        assert current == [node]
        assert page.locator(f"#flowchart g.node.visited[data-node='{node}']").count() == 1
        assert page.locator("#transcript .msg.assistant .turnform .chip.node").last.inner_text() == node
        assert page.locator("#transcript .msg.user").count() == turn
        turns.append((text, node))
        if page.is_visible("#ended"):
            break
    print("turns (message, node):", turns)  # shown with pytest -s
    assert page.is_visible("#ended"), f"the conversation did not end in {MAX_TURNS} turns: {turns}"

    outcome = chart["nodes"][[n["id"] for n in chart["nodes"]].index(node)]["end"]
    assert outcome, f"ended at {node}, which is no end of the workflow"
    assert outcome in page.inner_text("#ended")
    assert page.is_disabled("#message") and page.is_disabled("#send")
    assert page.locator("#flowchart g.node.current").get_attribute("class").split().count(f"end-{outcome}") == 1
    assert page.locator("#flowchart g.node.visited[data-node='greet']").count() == 1  # the path starts at the start
    assert page.locator("#flowchart g.edge.visited").count() >= 1

    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"

    page.click("#restart")
    assert page.locator("#transcript > *").count() == 0
    assert page.is_enabled("#message") and page.is_enabled("#send")
    assert not page.is_visible("#ended")
    assert page.locator("#flowchart g.node.current, #flowchart g.node.visited").count() == 0
    assert script_errors == []
