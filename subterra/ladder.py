"""The ladder: every route side by side on each held-out set — quality, tokens, latency and price.

One row per route x set (the test sets natural, test_unseen and holdout first, each strict pass
with its 95% interval; then validation, which choices were made on), from ``eval_scores`` (quality, tokens, latency) and ``cost_report``
($ per conversation; the ``frontier`` route, Claude with the procedure in context when it ran,
priced from its ``frontier_measured`` row). If a repair round promoted new weights, the promoted model's deployed route
is added as its own row (``compiled_prefill@round1``), so the table shows both the compile and what
the repair loop made of it. ``subterra ladder`` prints it; the ``ladder`` table holds the same rows.
"""

from __future__ import annotations

import polars as pl

from subterra.cost import MEASURED
from subterra.evaluation import SET_LABELS, SET_ORDER
from subterra.routes import ROUTES, SPECS

COLUMNS = [
    "workflow", "route", "set", "model", "scenarios", "strict_pass", "strict_pass_low", "strict_pass_high",
    "partial_credit", "slot_accuracy",
    "form_validity", "failure_rate", "tokens_in", "tokens_out", "tokens_per_conversation", "latency_p50_ms",
    "usd_per_conversation",
]
SHOWN = {
    "route": "route",
    "strict_pass": "strict",
    "strict_ci": "95% CI",
    "partial_credit": "partial",
    "slot_accuracy": "slots",
    "form_validity": "forms",
    "failure_rate": "failed",
    "tokens_per_conversation": "tokens/conv",
    "tokens_out": "out/conv",
    "latency_p50_ms": "p50 ms/turn (batched)",
    "usd_per_conversation": "$/conv",
}


def _order(route: str) -> tuple:
    base = route.split("@")[0]
    return (ROUTES.index(base) if base in ROUTES else len(ROUTES), route)


def build_ladder(scores: pl.DataFrame, cost: pl.DataFrame, promotions: pl.DataFrame | None = None,
                 repair_scores: pl.DataFrame | None = None) -> pl.DataFrame:
    """The ladder table (``COLUMNS``), routes in ladder order within each holdout."""
    price = {(r["route"], r["set"]): r for r in cost.iter_rows(named=True)}
    rows = []

    def add(r: dict, route: str, model: str, usd: float | None) -> None:
        rows.append(
            {
                **{k: r.get(k) for k in COLUMNS if k in r},
                "route": route,
                "model": model,
                "tokens_per_conversation": float(r["tokens_in"]) + float(r["tokens_out"]),
                "usd_per_conversation": usd,
            }
        )

    for r in scores.iter_rows(named=True):
        spec = SPECS.get(r["route"])
        if spec is not None and not spec.local:  # priced from Claude's measured usage
            found, model = price.get((MEASURED, r["set"])), "frontier (Claude, procedure in context)"
        else:
            found = price.get((r["route"], r["set"]))
            model = spec.weights if spec is not None else "compiled"
        add(r, r["route"], model, found["usd_per_conversation"] if found else None)
    if promotions is not None and repair_scores is not None and promotions.height:
        last = promotions.sort("round").row(promotions.height - 1, named=True)
        promoted = repair_scores.filter(pl.col("model_dir") == last["model_dir"])
        for r in promoted.iter_rows(named=True):
            deployed = price.get((r["route"], r["set"]))
            usd = None
            if deployed:  # same self-hosted prices per token as the route it replaces
                per_token = deployed["usd_per_conversation"] / max(1e-9, deployed["tokens_in"] + deployed["tokens_out"])
                usd = per_token * (float(r["tokens_in"]) + float(r["tokens_out"]))
            add(r, f"{r['route']}@round{r['round']}", f"promoted (repair round {r['round']})", usd)
    frame = pl.DataFrame(rows).select([c for c in COLUMNS if c in {k for row in rows for k in row}])
    rank = {name: i for i, name in enumerate(SET_ORDER)}
    keys = sorted(range(frame.height), key=lambda i: (rank.get(frame["set"][i], len(rank)), frame["set"][i], _order(frame["route"][i])))
    return frame[keys]


def format_ladder(ladder: pl.DataFrame) -> str:
    """The ladder as text, one block per set, test sets first."""
    out = []
    for (holdout,), part in ladder.group_by("set", maintain_order=True):
        n = int(part["scenarios"].max())
        out.append(f"-- {SET_LABELS.get(holdout, holdout)} ({n} conversations per route)")
        if "strict_pass_low" in part.columns:
            part = part.with_columns(pl.concat_str([pl.col("strict_pass_low").round(3), pl.lit("-"),
                                                    pl.col("strict_pass_high").round(3)]).alias("strict_ci"))
        else:
            part = part.with_columns(pl.lit("n/a").alias("strict_ci"))
        shown = part.select([pl.col(c).alias(name) for c, name in SHOWN.items()])
        with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_cols=20,
                       tbl_width_chars=200, float_precision=3, fmt_str_lengths=40):
            out.append(str(shown.with_columns(pl.col("$/conv").map_elements(lambda x: f"{x:.7f}" if x is not None else "n/a",
                                                                             return_dtype=pl.String)))
                       )
    return "\n".join(out)
