"""The workflow as tables: one row per node, one per edge, and summary metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from subterra.workflow import Workflow


def node_kind(node) -> str:
    """'terminal' (has end), 'decision' (two or more branches) or 'step'."""
    if node.is_terminal:
        return "terminal"
    return "decision" if node.is_decision else "step"


def node_table(wf: Workflow) -> pl.DataFrame:
    """One row per node, in file order."""
    return pl.DataFrame(
        [
            {
                "workflow": wf.id,
                "node": n.id,
                "prompt": n.prompt,
                "kind": node_kind(n),
                "end": n.end,
                "n_say": len(n.say),
                "n_user": len(n.user),
                "collect": list(n.collect),
                "line": n.line,
            }
            for n in wf.nodes.values()
        ],
        schema={"workflow": pl.String, "node": pl.String, "prompt": pl.String, "kind": pl.String, "end": pl.String,
                "n_say": pl.Int64, "n_user": pl.Int64, "collect": pl.List(pl.String), "line": pl.Int64},
    )


def edge_table(wf: Workflow) -> pl.DataFrame:
    """One row per edge, in file order."""
    return pl.DataFrame(
        [
            {
                "workflow": wf.id,
                "edge": e.id,
                "source": e.source,
                "target": e.target,
                "kind": e.kind,
                "branch_index": e.index,
                "when": e.when,
                "n_user": len(e.user),
            }
            for e in wf.edges
        ],
        schema={"workflow": pl.String, "edge": pl.String, "source": pl.String, "target": pl.String, "kind": pl.String,
                "branch_index": pl.Int64, "when": pl.String, "n_user": pl.Int64},
    )


def graph_summary(wf: Workflow) -> dict:
    """Counts and the content hash, as asset metadata."""
    nodes = list(wf.nodes.values())
    return {
        "nodes": len(nodes),
        "edges": len(wf.edges),
        "decision_points": sum(1 for n in nodes if n.is_decision),
        "terminals": sum(1 for n in nodes if n.is_terminal),
        "slots": len(wf.slots),
        "max_visits": wf.max_visits,
        "content_hash": wf.content_hash,
    }
