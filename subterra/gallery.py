"""The gallery table: every compiled workflow's test numbers side by side, one row each.

``subterra gallery`` (``make gallery``) compiles each workflow with the defaults and prints this
table: people's conversations (``natural``), held-back lines (``test_unseen``) and seen phrasings
(``holdout``), each as strict pass with its n and 95% interval, then the compile's minutes.
"""

from __future__ import annotations

import polars as pl

from subterra.routes import DEPLOYED

COLUMNS = ("natural", "test_unseen", "holdout")


def cell(row: dict | None) -> str:
    if row is None:
        return "—"
    passed = round(row["strict_pass"] * row["scenarios"])
    return (f"{row['strict_pass']:.2f} ({passed}/{row['scenarios']}; "
            f"{row['strict_pass_low']:.2f}–{row['strict_pass_high']:.2f})")


def _minutes(value) -> str:
    return "—" if value is None else f"{value:.1f} min"


def gallery_table(results: list[dict]) -> str:
    """``results``: per workflow ``{"workflow", "paths", "minutes", "scores"}`` (its ``eval_scores``
    rows, or None when the compile failed) -> a Markdown table."""
    lines = ["| workflow | paths | natural (test) | test_unseen (test) | holdout, seen phrasings (test) | compile |",
             "|---|---|---|---|---|---|"]
    for result in results:
        scores: pl.DataFrame | None = result.get("scores")
        if scores is None:
            lines.append(f"| {result['workflow']} | {result.get('paths', '?')} | {result.get('note', 'compile failed')} | | | {_minutes(result['minutes'])} |")
            continue
        deployed = scores.filter(pl.col("route") == DEPLOYED)
        by_set = {r["set"]: r for r in deployed.iter_rows(named=True)}
        cells = " | ".join(cell(by_set.get(name)) for name in COLUMNS)
        lines.append(f"| {result['workflow']} | {result.get('paths', '?')} | {cells} | {_minutes(result['minutes'])} |")
    return "\n".join(lines)
