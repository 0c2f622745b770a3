"""Node and edge tables and the summary of a workflow, checked in DuckDB like the asset stores them."""

from __future__ import annotations

from pathlib import Path

import duckdb

from subterra.graph import edge_table, graph_summary, node_table
from subterra.workflow import load_workflow, parse_workflow_text

FIXTURES = Path(__file__).parent / "fixtures"

SINGLE_BRANCH = """\
workflow: single
assistant: You are a test.
start: a
nodes:
  a:
    prompt: Ask.
    branches:
      - {to: b, when: anything}
  b:
    prompt: Done.
    end: success
"""


def test_node_table_rows_follow_the_file():
    wf = load_workflow(FIXTURES / "mini_booking.yaml")
    nodes = node_table(wf)
    assert nodes["node"].to_list() == list(wf.nodes)
    assert nodes.columns == ["workflow", "node", "prompt", "kind", "end", "n_say", "n_user", "collect", "line"]
    greet = nodes.row(0, named=True)
    assert greet == {"workflow": "mini_booking", "node": "greet", "prompt": wf.nodes["greet"].prompt, "kind": "step", "end": None,
                     "n_say": 3, "n_user": 4, "collect": ["destination"], "line": wf.nodes["greet"].line}
    kinds = dict(zip(nodes["node"], nodes["kind"]))
    assert kinds["ask_count"] == "decision" and kinds["done"] == "terminal"
    assert (FIXTURES / "mini_booking.yaml").read_text().splitlines()[greet["line"] - 1].strip() == "greet:"


def test_edge_table_and_summary():
    wf = load_workflow(FIXTURES / "mini_booking.yaml")
    edges = edge_table(wf)
    assert edges["edge"].to_list() == [e.id for e in wf.edges]
    branch = edges.filter(edges["edge"] == "ask_count>cancel#1").row(0, named=True)
    assert branch == {"workflow": "mini_booking", "edge": "ask_count>cancel#1", "source": "ask_count", "target": "cancel",
                      "kind": "branch", "branch_index": 1, "when": "gives up", "n_user": 4}
    summary = graph_summary(wf)
    assert summary == {"nodes": 7, "edges": edges.height, "decision_points": 2, "terminals": 3, "slots": 4,
                       "max_visits": 1, "content_hash": wf.content_hash}


def test_a_single_branch_is_a_step_not_a_decision():
    wf = parse_workflow_text(SINGLE_BRANCH, "single.yaml")
    assert node_table(wf)["kind"].to_list() == ["step", "terminal"]
    assert edge_table(wf)["edge"].to_list() == ["a>b#0"]
    assert graph_summary(wf)["decision_points"] == 0


def test_tables_store_in_duckdb(tmp_path):
    wf = load_workflow(FIXTURES / "mini_booking.yaml")
    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    nodes, edges = node_table(wf), edge_table(wf)
    con.execute("create table workflow_nodes as select * from nodes")
    con.execute("create table workflow_edges as select * from edges")
    # every edge joins to its source and target node
    joined = con.execute("""select count(*) from workflow_edges e join workflow_nodes s on s.node = e.source
                            join workflow_nodes t on t.node = e.target""").fetchone()[0]
    assert joined == edges.height
    assert con.execute("select collect from workflow_nodes where node = 'greet'").fetchone()[0] == ["destination"]
