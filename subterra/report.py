"""``subterra report``: a workflow's compiled agent as a person reads it, within 100 columns.

The test sets first (people's conversations, held-back lines, seen phrasings), each with its n
and 95% interval; validation after them (what choices were made on); then the cost line with
money in significant digits, and where the full tables are.
"""

from __future__ import annotations

import textwrap

import polars as pl

from subterra.cost import FRONTIER, MEASURED
from subterra.evaluation import ordered
from subterra.routes import DEPLOYED

WIDTH = 100
SHORT_LABELS = {
    "natural": "natural (people, test)",
    "test_unseen": "test_unseen (test)",
    "holdout": "holdout (seen phrasings, test)",
    "validation": "validation (choices)",
    "validation_natural": "validation_natural (choices)",
}


def money(usd: float | None) -> str:
    """Dollars with the digits that carry information: $0.000319, $0.0531, $58.40, $1,234."""
    if usd is None:
        return "?"
    if usd >= 100:
        return f"${usd:,.0f}"
    if usd >= 1:
        return f"${usd:,.2f}"
    return f"${usd:.3g}" if usd else "$0"


def _interval(row: dict, name: str) -> str:
    low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
    value = f"{row[name]:.3f}"
    return value if low is None or high is None else f"{value} ({low:.2f}-{high:.2f})"


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False, break_long_words=True)


def format_report(workflow: str, scores: pl.DataFrame, cost: pl.DataFrame, training: dict, serving_why: str,
                  model: str, db_path: str) -> str:
    lines: list[str] = []
    minutes = training["train_seconds"] / 60
    lines += _wrapped(f"== {workflow}: {training['params'] / 1e6:.1f}M parameters, {training['steps']} training steps "
                      f"in {minutes:.1f} min ({training['tokens_per_second']:.0f} tokens/s)")
    lines += _wrapped(f"model: {model}")
    lines += _wrapped(f"serving: {serving_why}")
    deployed = scores.filter(pl.col("route") == DEPLOYED) if DEPLOYED in scores["route"].to_list() else scores
    lines += ["", f"== how the compiled agent does (route {DEPLOYED}; n conversations, 95% interval)",
              f"{'set':<31}{'n':>5}  {'strict pass':<22}{'failure rate':<22}{'partial':>8}"]
    for r in ordered(deployed).iter_rows(named=True):
        lines.append(f"{SHORT_LABELS.get(r['set'], r['set'])[:30]:<31}{r['scenarios']:>5}  "
                     f"{_interval(r, 'strict_pass'):<22}{_interval(r, 'failure_rate'):<22}{r['partial_credit']:>8.3f}")
    by_route = {(r["route"], r["set"]): r for r in cost.iter_rows(named=True)}
    compiled = by_route.get((DEPLOYED, "holdout")) or next((r for r in cost.iter_rows(named=True) if r["route"] == DEPLOYED), None)
    frontier = next((r for r in cost.iter_rows(named=True) if r["route"] in (FRONTIER, MEASURED)), None)
    if compiled is not None:
        first = cost.row(0, named=True)
        line = f"== cost per conversation: compiled {money(compiled['usd_per_conversation'])}"
        if frontier is not None:
            line += f", frontier {money(frontier['usd_per_conversation'])} ({frontier['route']})"
        if first.get("multiplier") is not None:
            line += (f": {first['multiplier']:.0f}x cheaper (price {first['price_factor']:.0f}x, "
                     f"volume {first['volume_factor']:.1f}x)")
        n = first.get("breakeven_conversations")
        line += f"; compile {money(first.get('compile_cost_usd'))}, paid back after {n} conversation{'' if n == 1 else 's'}"
        lines += [""] + _wrapped(line)
    lines += [""] + _wrapped(f"full tables: duckdb {db_path} \"select * from eval_scores where workflow = '{workflow}'\" "
                             f"(also cost_report, eval_scenarios, trained_weights)")
    return "\n".join(lines)
