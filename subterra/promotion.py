"""The promotion gate: which weights serve a workflow, and why.

A repair round's candidate weights are promoted only if, on the same held-out scenarios played
the same way, the deployed route's strict pass improves *and* no failure cluster of the repair
map grows (by more than ``tolerance`` failures; a cluster that did not exist before counts from
zero). Otherwise the last promoted model stays, and the refusal says which condition failed.

Every decision is a row of the ``promotions`` table (round 0 is the compile's own model, promoted
by default); ``subterra.serving`` reads the latest promoted one to decide which model serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import polars as pl

from subterra.repair import cluster_counts

PROMOTIONS_SCHEMA = {
    "workflow": pl.String,
    "round": pl.Int64,
    "candidate_dir": pl.String,
    "promoted": pl.Boolean,
    "model_dir": pl.String,  # the promoted model after this decision
    "route": pl.String,
    "scenarios": pl.Int64,
    "strict_before": pl.Float64,
    "strict_after": pl.Float64,
    "regressed": pl.List(pl.String),
    "reason": pl.String,
    "decided_at": pl.String,
}


@dataclass
class Decision:
    promoted: bool
    reason: str
    strict_before: float
    strict_after: float
    scenarios: int
    changes: pl.DataFrame  # cluster, before, after, change
    regressed: list[str] = field(default_factory=list)


def strict_pass(scenarios: pl.DataFrame, route: str) -> float:
    part = scenarios.filter(pl.col("route") == route)
    return float(part["strict_pass"].mean()) if part.height else 0.0


def cluster_changes(before: pl.DataFrame, after: pl.DataFrame, route: str) -> pl.DataFrame:
    """Failures per cluster before and after, every cluster of either side, biggest change first."""
    b, a = cluster_counts(before, route), cluster_counts(after, route)
    rows = [{"cluster": c, "before": b.get(c, 0), "after": a.get(c, 0), "change": a.get(c, 0) - b.get(c, 0)} for c in {**b, **a}]
    schema = {"cluster": pl.String, "before": pl.Int64, "after": pl.Int64, "change": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort(["change", "cluster"])


def decide(before: pl.DataFrame, after: pl.DataFrame, route: str, tolerance: int = 0) -> Decision:
    """Promote the candidate (``after``: its ``eval_scenarios`` rows) over the current model
    (``before``) on ``route``? Both are compared on the scenarios they share."""
    shared = set(before.filter(pl.col("route") == route)["scenario_id"]) & set(after.filter(pl.col("route") == route)["scenario_id"])
    if not shared:
        raise ValueError(f"no held-out scenario of route {route!r} was played by both models")
    before = before.filter((pl.col("route") == route) & pl.col("scenario_id").is_in(list(shared)))
    after = after.filter((pl.col("route") == route) & pl.col("scenario_id").is_in(list(shared)))
    s0, s1 = strict_pass(before, route), strict_pass(after, route)
    changes = cluster_changes(before, after, route)
    regressed = changes.filter(pl.col("change") > tolerance)
    names = [f"{r['cluster']} ({r['before']} -> {r['after']})" for r in regressed.iter_rows(named=True)]
    moved = f"validation strict pass {s0:.3f} -> {s1:.3f} on {len(shared)} scenarios ({route})"
    if s1 <= s0:
        reason = f"refused: {moved} did not improve"
        if names:
            reason += f"; and {len(names)} cluster(s) grew: {'; '.join(names)}"
    elif names:
        reason = f"refused: {moved} improved, but {len(names)} cluster(s) grew: {'; '.join(names)}"
    else:
        fixed = int(-changes.filter(pl.col("change") < 0)["change"].sum())
        reason = f"promoted: {moved}; no cluster grew ({fixed} fewer failures)"
    return Decision(
        promoted=s1 > s0 and not names,
        reason=reason,
        strict_before=s0,
        strict_after=s1,
        scenarios=len(shared),
        changes=changes,
        regressed=[r["cluster"] for r in regressed.iter_rows(named=True)],
    )


def promotion_row(workflow: str, round_no: int, candidate_dir: str, model_dir: str, route: str, decision: Decision) -> dict:
    return {
        "workflow": workflow,
        "round": round_no,
        "candidate_dir": candidate_dir,
        "promoted": decision.promoted,
        "model_dir": model_dir,
        "route": route,
        "scenarios": decision.scenarios,
        "strict_before": decision.strict_before,
        "strict_after": decision.strict_after,
        "regressed": decision.regressed,
        "reason": decision.reason,
        "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def initial_row(workflow: str, model_dir: str, route: str, scenarios: pl.DataFrame) -> dict:
    """Round 0: the compile's own model, promoted because there is nothing before it."""
    s = strict_pass(scenarios, route)
    n = scenarios.filter(pl.col("route") == route).height
    decision = Decision(True, f"promoted: the compile's model (validation strict pass {s:.3f} on {n} scenarios, {route})",
                        s, s, n, pl.DataFrame())
    return promotion_row(workflow, 0, model_dir, model_dir, route, decision)
