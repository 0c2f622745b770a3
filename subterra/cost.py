"""The cost report: a frontier model with the procedure re-injected every turn, against the
compiled small model self-hosted; the multiplier and its two factors; the one-time cost of a
compile (training compute plus what the teacher's answers cost) and the number of conversations
after which it has paid for itself; the share of the frontier's quality the compiled model
reaches; and which parts of the compile used Claude and which stayed offline.

The frontier's cost is measured (Claude's own token usage on the holdout) when the frontier route
ran, and estimated from characters otherwise."""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import asdict, dataclass

import polars as pl

from subterra.procedure import render_procedure

CHARS_PER_TOKEN = 4.0  # estimate for frontier token counts (no frontier tokenizer offline)
FRONTIER = "frontier"  # the eval route of Claude with the procedure in context (subterra.frontier)


@dataclass(frozen=True)
class Prices:
    frontier_input_per_m: float = 3.00
    frontier_output_per_m: float = 15.00
    compiled_input_per_m: float = 0.05
    compiled_output_per_m: float = 0.23
    compute_per_hour: float = 0.10  # the machine a compile runs on (this CPU); a GPU node costs more


def frontier_tokens(wf, reference_messages: list[list[dict]]) -> tuple[float, float]:
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


def claude_parts(spend: TeacherSpend, scores: pl.DataFrame) -> dict[str, str]:
    """Which parts of this compile used Claude (model and what it did) and which stayed offline."""
    compiled = scores.filter(pl.col("route") != FRONTIER)
    user = compiled["user_simulator"][0] if "user_simulator" in compiled.columns else "scripted"
    judge = compiled["judge_model"][0] if "judge_model" in compiled.columns else None
    second = compiled["judge2_model"][0] if "judge2_model" in compiled.columns else None
    frontier = scores.filter((pl.col("route") == FRONTIER) & (pl.col("holdout") == "holdout"))
    return {
        "teacher": (f"{spend.teacher.removeprefix('claude:')}: {spend.conversations:,} conversations, "
                    f"{spend.tokens_in:,} tokens in, {spend.tokens_out:,} out, ${spend.usd:.4f}")
        if spend.teacher.startswith("claude:") else "offline (template teacher)",
        "user": user.removeprefix("claude:") if user.startswith("claude:") else "offline (scripted user)",
        "judge": (judge + (f", second judge {second}" if second else "")) if judge else "offline (objective scores only)",
        "frontier": "measured on the holdout" if frontier.height else "offline (frontier cost estimated from characters)",
    }


def build_cost_report(
    wf,
    scores: pl.DataFrame,
    training: dict,
    reference_messages: list[list[dict]],
    prices: Prices = Prices(),
    spend: TeacherSpend = TeacherSpend(),
) -> tuple[pl.DataFrame, dict, str]:
    """The cost comparison for one workflow: (table with one row per route, summary, Markdown).

    ``scores`` is the ``eval_scores`` table: its compiled ``holdout`` row gives the compiled
    model's measured tokens per conversation, and a ``frontier`` row (Claude with the procedure in
    context, when that route ran) the frontier's measured tokens and dollars. Without one, the
    frontier is estimated from ``reference_messages`` (the holdout conversations) at
    ``CHARS_PER_TOKEN`` and the ``prices``. ``training`` is the ``trained_weights`` row (its
    ``train_seconds`` price the compute), ``spend`` what the teacher's answers cost: together the
    one-time compile cost."""
    holdout = scores.filter(pl.col("holdout") == "holdout")
    row = holdout.filter(pl.col("route") != FRONTIER).row(0, named=True)
    measured = holdout.filter(pl.col("route") == FRONTIER)
    f_in, f_out = frontier_tokens(wf, reference_messages)
    c_in, c_out = float(row["tokens_in"]), float(row["tokens_out"])
    f_cost = (f_in * prices.frontier_input_per_m + f_out * prices.frontier_output_per_m) / 1e6
    c_cost = (c_in * prices.compiled_input_per_m + c_out * prices.compiled_output_per_m) / 1e6
    rows = [
        {"workflow": wf.id, "route": "frontier_in_context", "tokens_in": f_in, "tokens_out": f_out,
         "usd_per_conversation": f_cost, "token_source": f"estimated, {CHARS_PER_TOKEN:g} chars/token"},
    ]
    if measured.height:  # the baseline is what Claude really read, wrote and cost
        m = measured.row(0, named=True)
        f_in, f_out, f_cost = float(m["tokens_in"]), float(m["tokens_out"]), float(m["usd_per_conversation"])
        rows.append({"workflow": wf.id, "route": "frontier_measured", "tokens_in": f_in, "tokens_out": f_out,
                     "usd_per_conversation": f_cost, "token_source": "measured in eval (holdout), Claude's usage"})
    rows.append({"workflow": wf.id, "route": "compiled", "tokens_in": c_in, "tokens_out": c_out,
                 "usd_per_conversation": c_cost, "token_source": "measured in eval (holdout)"})
    table = pl.DataFrame(rows).with_columns(
        (pl.col("usd_per_conversation") / (pl.col("tokens_in") + pl.col("tokens_out")).clip(lower_bound=1e-9) * 1e6)
        .alias("usd_per_million_tokens")
    ).select("workflow", "route", "tokens_in", "tokens_out", "usd_per_conversation", "usd_per_million_tokens", "token_source")
    f_price = f_cost / max(1e-9, f_in + f_out)
    c_price = c_cost / max(1e-9, c_in + c_out)
    training_cost = float(training.get("train_seconds", 0.0)) / 3600 * prices.compute_per_hour
    compile_cost = training_cost + spend.usd
    saving = f_cost - c_cost
    breakeven = math.ceil(compile_cost / saving) if saving > 0 else None
    summary = {
        "baseline": rows[-2]["route"],
        "multiplier": f_cost / c_cost if c_cost > 0 else None,
        "price_factor": f_price / c_price if c_price > 0 else None,
        "volume_factor": (f_in + f_out) / (c_in + c_out) if (c_in + c_out) > 0 else None,
        "compile_cost_usd": compile_cost,
        "training_cost_usd": training_cost,
        "teacher_cost_usd": spend.usd,
        "breakeven_conversations": breakeven,
        "pct_of_frontier_quality": row.get("pct_of_frontier_quality"),
        "pct_of_frontier_strict_pass": row.get("pct_of_frontier_strict_pass"),
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


def _markdown(wf, table: pl.DataFrame, summary: dict) -> str:
    lines = [
        f"## Cost per conversation: {wf.id}",
        "",
        "| route | tokens in | tokens out | $ / conversation | $ / M tokens | token counts |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in table.iter_rows(named=True):
        lines.append(
            f"| {r['route']} | {r['tokens_in']:,.0f} | {r['tokens_out']:,.0f} | {r['usd_per_conversation']:.6f} | "
            f"{r['usd_per_million_tokens']:.3f} | {r['token_source']} |"
        )
    quality = summary["pct_of_frontier_quality"]
    strict = summary["pct_of_frontier_strict_pass"]
    lines += [
        "",
        f"**Multiplier: {_fmt(summary['multiplier'], 1)}x cheaper** than {summary['baseline']}"
        f"{'' if (summary['multiplier'] or 0) >= 1 else ' (below 1: the compiled route costs more)'} = price per token {_fmt(summary['price_factor'], 1)}x "
        f"x token volume {_fmt(summary['volume_factor'], 2)}x.",
        f"One-time compile: ${summary['compile_cost_usd']:.4f} (training compute ${summary['training_cost_usd']:.4f} at "
        f"${summary['prices']['compute_per_hour']}/h, teacher ${summary['teacher_cost_usd']:.4f}); "
        f"pays for itself after {summary['breakeven_conversations'] if summary['breakeven_conversations'] is not None else 'n/a'} conversations.",
        "",
        f"**{_fmt(quality, 1)}% of frontier quality** (judged, holdout)"
        + (f"; {_fmt(strict, 1)}% of its strict pass rate." if strict is not None else ".")
        if quality is not None or strict is not None else
        "% of frontier quality: n/a (the frontier route or the judge is offline).",
        "",
        "**Claude**: " + "; ".join(f"{part}: {what}" for part, what in summary["claude"].items()) + ".",
        "",
        f"![cost per conversation](data:image/png;base64,{cost_chart(table, summary['compile_cost_usd'], summary['breakeven_conversations'])})",
    ]
    return "\n".join(lines)


def cost_chart(table: pl.DataFrame, compile_cost: float, breakeven: int | None) -> str:
    """Two panels as base64 PNG: $ per conversation of each route (log scale), and the running
    cost over conversations with the compile's one-time cost and the break-even point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = dict(zip(table["route"].to_list(), table["usd_per_conversation"].to_list()))
    fig, (bars, running) = plt.subplots(1, 2, figsize=(9, 2.8), dpi=100)
    colors = {"frontier_in_context": "#c0504d", "frontier_measured": "#9b2d2a", "compiled": "#4f81bd"}
    bars.barh(list(per), list(per.values()), color=[colors[r] for r in per])
    bars.set_xscale("log")
    bars.set_xlabel("$ per conversation (log scale)")
    horizon = max(10, 3 * breakeven) if breakeven else 10_000
    n = [0, horizon]
    baseline = "frontier_measured" if "frontier_measured" in per else "frontier_in_context"
    running.plot(n, [per[baseline] * x for x in n], color=colors[baseline],
                 label="frontier, procedure in context" + (" (measured)" if baseline == "frontier_measured" else ""))
    running.plot(n, [compile_cost + per["compiled"] * x for x in n], color="#4f81bd", label="compiled (incl. compile)")
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
