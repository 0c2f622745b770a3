"""The cost report: every evaluated route priced from its measured tokens per conversation,
against a frontier model with the procedure re-injected every turn; the multiplier of the
frontier over the deployed route and its two factors; the one-time cost of a compile (training
compute plus what the teacher's answers cost) and the number of conversations after which it has
paid for itself; the share of the frontier's quality the deployed route reaches; and which parts
of the compile used Claude and which stayed offline.

The frontier's cost is measured (Claude's own token usage: the ``frontier`` eval route) when that
route ran; otherwise it is priced from the measured tokens of the route that stands in for it
(``routes.FRONTIER_PROXY``, ``orchestrated``: the same procedure and history sent every turn) or,
with neither, estimated from characters. Which route is which is ``subterra.routes.SPECS``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import base64
import io
import json
import math
from dataclasses import asdict, dataclass

import polars as pl

from subterra.procedure import render_procedure
from subterra.routes import DEPLOYED_OR_COMPILED, FRONTIER_PROXY, FRONTIER_ROUTE, SPECS

if TYPE_CHECKING:
    from subterra.workflow import Workflow

CHARS_PER_TOKEN = 4.0  # estimate for frontier token counts (no frontier tokenizer offline)
FRONTIER = "frontier_in_context"  # the frontier with the procedure in context, priced (estimated or from FRONTIER_PROXY)
MEASURED = "frontier_measured"  # the same, measured: Claude's usage on the ``frontier`` eval route
SELF_HOSTED = "self-hosted (compiled prices)"


@dataclass(frozen=True)
class Prices:
    frontier_input_per_m: float = 3.00
    frontier_output_per_m: float = 15.00
    compiled_input_per_m: float = 0.05
    compiled_output_per_m: float = 0.23
    compute_per_hour: float = 0.10  # the machine a compile runs on (this CPU); a GPU node costs more


def frontier_tokens(wf: Workflow, reference_messages: list[list[dict]]) -> tuple[float, float]:
    """Mean (input, output) tokens per conversation for the frontier route: on every assistant
    turn the procedure plus the whole history is sent; the form is generated. Estimated at
    ``CHARS_PER_TOKEN`` characters per token."""
    procedure = len(render_procedure(wf))
    tin = tout = 0.0
    for messages in reference_messages:
        history = 0
        for m in messages[1:]:
            if m["role"] == "assistant":
                tin += (procedure + history) / CHARS_PER_TOKEN
                tout += len(m["content"]) / CHARS_PER_TOKEN
            history += len(m["content"])
    n = max(1, len(reference_messages))
    return tin / n, tout / n


@dataclass(frozen=True)
class TeacherSpend:
    """What writing the corpus cost (measured from a teacher model's answers; zero offline)."""

    teacher: str = "template"
    conversations: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float = 0.0

    @classmethod
    def of(cls, corpus: pl.DataFrame) -> "TeacherSpend":
        """From the ``synthetic_corpus`` table (every conversation written, rejected ones included)."""
        if "teacher_usd" not in corpus.columns:  # a corpus written before teachers were priced
            return cls(", ".join(sorted(set(corpus["teacher"]))), corpus.height)
        return cls(", ".join(sorted(set(corpus["teacher"]))), corpus.height, int(corpus["teacher_tokens_in"].sum()),
                   int(corpus["teacher_tokens_out"].sum()), float(corpus["teacher_usd"].sum()))


def route_prices(route: str, prices: Prices) -> tuple[float, float]:
    """$ per million (input, output) tokens of a route: frontier prices for a frontier route (a
    hosted one, or the cost report's frontier rows), the self-hosted small model's for every local
    one (base or fine-tuned, the same 135M model)."""
    if route in (FRONTIER, MEASURED) or (route in SPECS and not SPECS[route].local):
        return prices.frontier_input_per_m, prices.frontier_output_per_m
    return prices.compiled_input_per_m, prices.compiled_output_per_m


def _row(wf: Workflow, route: str, holdout: str, tokens_in: float, tokens_out: float, source: str, prices: Prices) -> dict:
    p_in, p_out = route_prices(route, prices)
    cost = (tokens_in * p_in + tokens_out * p_out) / 1e6
    total = tokens_in + tokens_out
    return {
        "workflow": wf.id,
        "route": route,
        "set": holdout,
        "tokens_in": float(tokens_in),
        "tokens_out": float(tokens_out),
        "usd_per_conversation": cost,
        "usd_per_million_tokens": cost / total * 1e6 if total else 0.0,
        "token_source": source,
    }



def claude_parts(spend: TeacherSpend, scores: pl.DataFrame) -> dict[str, str]:
    """Which parts of this compile used Claude (model and what it did) and which stayed offline."""
    compiled = scores.filter(pl.col("route") != FRONTIER_ROUTE)
    user = compiled["user_simulator"][0] if "user_simulator" in compiled.columns else "scripted"
    judge = compiled["judge_model"][0] if "judge_model" in compiled.columns else None
    second = compiled["judge2_model"][0] if "judge2_model" in compiled.columns else None
    frontier = scores.filter((pl.col("route") == FRONTIER_ROUTE) & (pl.col("set") == "holdout"))
    return {
        "teacher": (f"{spend.teacher.removeprefix('claude:')}: {spend.conversations:,} conversations, "
                    f"{spend.tokens_in:,} tokens in, {spend.tokens_out:,} out, ${spend.usd:.4f}")
        if spend.teacher.startswith("claude:") else "offline (template teacher)",
        "user": user.removeprefix("claude:") if user.startswith("claude:") else "offline (scripted user)",
        "judge": (judge + (f", second judge {second}" if second else "")) if judge else "offline (objective scores only)",
        "frontier": "measured on the holdout" if frontier.height else "offline (frontier cost estimated from characters)",
    }


def build_cost_report(
    wf: Workflow,
    scores: pl.DataFrame,
    training: dict,
    reference_messages: list[list[dict]],
    prices: Prices = Prices(),
    spend: TeacherSpend = TeacherSpend(),
) -> tuple[pl.DataFrame, dict, str]:
    """The cost comparison for one workflow: (table with one row per route x holdout, summary, Markdown).

    ``scores`` is the ``eval_scores`` table: every evaluated local route is priced from its
    measured tokens per conversation at the self-hosted prices. The frontier model with the
    procedure in context (``frontier_in_context``) is priced at frontier prices from the
    ``FRONTIER_PROXY`` route's measured tokens (the same procedure and history sent every turn,
    counted by the small model's tokenizer: labelled as such) or, without it, estimated from the
    characters of ``reference_messages`` (the holdout conversations) at ``CHARS_PER_TOKEN``. When
    the ``frontier`` route ran (Claude with the procedure in context), its measured tokens and
    dollars are a ``frontier_measured`` row, and the baseline. The summary's multiplier compares
    the baseline with the deployed route (else another on the fine-tuned weights) on ``holdout``.
    ``training`` is the ``trained_weights`` row (its ``train_seconds`` price the compute),
    ``spend`` what the teacher's answers cost: together the one-time compile cost."""
    measured = {(r["route"], r["set"]): r for r in scores.iter_rows(named=True)}
    holdouts = list(dict.fromkeys(r["set"] for r in scores.iter_rows(named=True)))
    rows = []
    for holdout in holdouts:
        if (FRONTIER_PROXY, holdout) in measured:
            r = measured[(FRONTIER_PROXY, holdout)]
            rows.append(_row(wf, FRONTIER, holdout, r["tokens_in"], r["tokens_out"],
                             f"{FRONTIER_PROXY} route's measured tokens (small model's tokenizer), at frontier prices", prices))
        elif holdout == "holdout":
            f_in, f_out = frontier_tokens(wf, reference_messages)
            rows.append(_row(wf, FRONTIER, holdout, f_in, f_out, f"estimated, {CHARS_PER_TOKEN:g} chars/token", prices))
        if (FRONTIER_ROUTE, holdout) in measured:  # what Claude really read, wrote and cost
            r = measured[(FRONTIER_ROUTE, holdout)]
            row = _row(wf, MEASURED, holdout, r["tokens_in"], r["tokens_out"], f"measured in eval ({holdout}), Claude's usage", prices)
            if r.get("usd_per_conversation") is not None:
                total = row["tokens_in"] + row["tokens_out"]
                row["usd_per_conversation"] = float(r["usd_per_conversation"])
                row["usd_per_million_tokens"] = row["usd_per_conversation"] / total * 1e6 if total else 0.0
            rows.append(row)
    for (route, holdout), r in measured.items():
        if route != FRONTIER_ROUTE:
            rows.append(_row(wf, route, holdout, r["tokens_in"], r["tokens_out"], f"measured in eval, {SELF_HOSTED}", prices))
    table = pl.DataFrame(rows)
    by = {(r["route"], r["set"]): r for r in rows}
    deployed = next((route for route in DEPLOYED_OR_COMPILED if (route, "holdout") in by), None)
    baseline = next((route for route in (MEASURED, FRONTIER) if (route, "holdout") in by), None)
    if deployed is None or baseline is None:
        raise ValueError(f"{wf.id}: the cost report needs the frontier and a compiled route on 'holdout'")
    f, c = by[(baseline, "holdout")], by[(deployed, "holdout")]
    f_cost, c_cost = f["usd_per_conversation"], c["usd_per_conversation"]
    f_tokens, c_tokens = f["tokens_in"] + f["tokens_out"], c["tokens_in"] + c["tokens_out"]
    f_price = f_cost / max(1e-9, f_tokens)
    c_price = c_cost / max(1e-9, c_tokens)
    training_cost = float(training.get("train_seconds", 0.0)) / 3600 * prices.compute_per_hour
    compile_cost = training_cost + spend.usd
    saving = f_cost - c_cost
    breakeven = math.ceil(compile_cost / saving) if saving > 0 else None
    quality = measured[(deployed, "holdout")]
    summary = {
        "deployed_route": deployed,
        "baseline": baseline,
        "multiplier": f_cost / c_cost if c_cost > 0 else None,
        "price_factor": f_price / c_price if c_price > 0 else None,
        "volume_factor": f_tokens / c_tokens if c_tokens > 0 else None,
        "compile_cost_usd": compile_cost,
        "training_cost_usd": training_cost,
        "teacher_cost_usd": spend.usd,
        "breakeven_conversations": breakeven,
        "pct_of_frontier_quality": quality.get("pct_of_frontier_quality"),
        "pct_of_frontier_strict_pass": quality.get("pct_of_frontier_strict_pass"),
        "claude": claude_parts(spend, scores),
        "prices": asdict(prices),
    }
    table = table.with_columns(
        pl.lit(summary["multiplier"]).alias("multiplier"),
        pl.lit(summary["price_factor"]).alias("price_factor"),
        pl.lit(summary["volume_factor"]).alias("volume_factor"),
        pl.lit(compile_cost).alias("compile_cost_usd"),
        pl.lit(training_cost).alias("training_cost_usd"),
        pl.lit(spend.usd).alias("teacher_cost_usd"),
        pl.lit(breakeven).cast(pl.Int64).alias("breakeven_conversations"),
        pl.lit(summary["pct_of_frontier_quality"], dtype=pl.Float64).alias("pct_of_frontier_quality"),
        pl.lit(json.dumps(summary["claude"])).alias("claude_parts"),
    )
    return table, summary, _markdown(wf, table, summary)


def _fmt(x, digits=2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _markdown(wf: Workflow, table: pl.DataFrame, summary: dict) -> str:
    lines = [
        f"## Cost per conversation: {wf.id}",
        "",
        "| route | holdout | tokens in | tokens out | $ / conversation | $ / M tokens | token counts |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in table.iter_rows(named=True):
        lines.append(
            f"| {r['route']} | {r['set']} | {r['tokens_in']:,.0f} | {r['tokens_out']:,.0f} | {r['usd_per_conversation']:.6f} | "
            f"{r['usd_per_million_tokens']:.3f} | {r['token_source']} |"
        )
    quality = summary["pct_of_frontier_quality"]
    strict = summary["pct_of_frontier_strict_pass"]
    lines += [
        "",
        f"**Multiplier ({summary['deployed_route']}, holdout): {_fmt(summary['multiplier'], 1)}x cheaper** than {summary['baseline']}"
        f"{'' if (summary['multiplier'] or 0) >= 1 else ' (below 1: the compiled route costs more)'} = price per token {_fmt(summary['price_factor'], 1)}x "
        f"x token volume {_fmt(summary['volume_factor'], 2)}x.",
        f"One-time compile: ${summary['compile_cost_usd']:.4f} (training compute ${summary['training_cost_usd']:.4f} at "
        f"${summary['prices']['compute_per_hour']}/h, teacher ${summary['teacher_cost_usd']:.4f}); "
        f"pays for itself {_after(summary['breakeven_conversations'])}.",
        "",
        f"**{_fmt(quality, 1)}% of frontier quality** ({summary['deployed_route']}, judged, holdout)"
        + (f"; {_fmt(strict, 1)}% of its strict pass rate." if strict is not None else ".")
        if quality is not None or strict is not None else
        "% of frontier quality: n/a (the frontier route or the judge is offline).",
        "",
        "**Claude**: " + "; ".join(f"{part}: {what}" for part, what in summary["claude"].items()) + ".",
        "",
        f"![cost per conversation](data:image/png;base64,{cost_chart(table, summary['deployed_route'], summary['baseline'], summary['compile_cost_usd'], summary['breakeven_conversations'])})",
    ]
    return "\n".join(lines)


COLORS = {FRONTIER: "#c0504d", MEASURED: "#9b2d2a"}


def cost_chart(table: pl.DataFrame, deployed: str, baseline: str, compile_cost: float, breakeven: int | None) -> str:
    """Two panels as base64 PNG: $ per conversation of each route on ``holdout`` (log scale), and
    the running cost over conversations of the ``baseline`` frontier and the ``deployed`` route,
    with the compile's one-time cost and the break-even point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = table.filter(pl.col("set") == "holdout")
    per = dict(zip(held["route"].to_list(), held["usd_per_conversation"].to_list()))
    fig, (bars, running) = plt.subplots(1, 2, figsize=(9, 2.8), dpi=100)
    bars.barh(list(per), list(per.values()), color=[COLORS.get(r, "#4f81bd") for r in per])
    bars.set_xscale("log")
    bars.set_xlabel("$ per conversation (log scale)")
    horizon = max(10, 3 * breakeven) if breakeven else 10_000
    n = [0, horizon]
    running.plot(n, [per[baseline] * x for x in n], color=COLORS[baseline],
                 label="frontier, procedure in context" + (" (measured)" if baseline == MEASURED else ""))
    running.plot(n, [compile_cost + per[deployed] * x for x in n], color="#4f81bd", label=f"{deployed} (incl. compile)")
    if breakeven:
        running.axvline(breakeven, color="grey", linestyle=":", label=f"break-even: {breakeven:,} conversations")
    running.set_xlabel("conversations")
    running.set_ylabel("total $")
    running.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _after(conversations: int | None) -> str:
    if conversations is None:
        return "after n/a conversations"
    return f"after {conversations:,} conversation{'' if conversations == 1 else 's'}"
