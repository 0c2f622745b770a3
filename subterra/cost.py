"""The cost report: a frontier model with the procedure re-injected every turn, against the
compiled small model self-hosted; the multiplier and its two factors; the one-time cost of a
compile and the number of conversations after which it has paid for itself."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import asdict, dataclass

import polars as pl

from subterra.procedure import render_procedure

CHARS_PER_TOKEN = 4.0  # estimate for frontier token counts (no frontier tokenizer offline)


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


def build_cost_report(
    wf, scores: pl.DataFrame, training: dict, reference_messages: list[list[dict]], prices: Prices = Prices()
) -> tuple[pl.DataFrame, dict, str]:
    """The cost comparison for one workflow: (table with one row per route, summary, Markdown).

    ``scores`` is the ``eval_scores`` table (its ``holdout`` row gives the compiled model's
    measured tokens per conversation), ``training`` the ``trained_weights`` row (its
    ``train_seconds`` price the compile), ``reference_messages`` the holdout conversations the
    frontier route would have had (token counts estimated from their characters)."""
    row = scores.filter(pl.col("holdout") == "holdout").row(0, named=True)
    f_in, f_out = frontier_tokens(wf, reference_messages)
    c_in, c_out = float(row["tokens_in"]), float(row["tokens_out"])
    f_cost = (f_in * prices.frontier_input_per_m + f_out * prices.frontier_output_per_m) / 1e6
    c_cost = (c_in * prices.compiled_input_per_m + c_out * prices.compiled_output_per_m) / 1e6
    f_price = f_cost / max(1e-9, f_in + f_out)
    c_price = c_cost / max(1e-9, c_in + c_out)
    compile_cost = float(training.get("train_seconds", 0.0)) / 3600 * prices.compute_per_hour
    saving = f_cost - c_cost
    breakeven = math.ceil(compile_cost / saving) if saving > 0 else None
    table = pl.DataFrame(
        [
            {
                "workflow": wf.id,
                "route": "frontier_in_context",
                "tokens_in": f_in,
                "tokens_out": f_out,
                "usd_per_conversation": f_cost,
                "usd_per_million_tokens": f_price * 1e6,
                "token_source": f"estimated, {CHARS_PER_TOKEN:g} chars/token",
            },
            {
                "workflow": wf.id,
                "route": "compiled",
                "tokens_in": c_in,
                "tokens_out": c_out,
                "usd_per_conversation": c_cost,
                "usd_per_million_tokens": c_price * 1e6,
                "token_source": "measured in eval (holdout)",
            },
        ]
    )
    summary = {
        "multiplier": f_cost / c_cost if c_cost > 0 else None,
        "price_factor": f_price / c_price if c_price > 0 else None,
        "volume_factor": (f_in + f_out) / (c_in + c_out) if (c_in + c_out) > 0 else None,
        "compile_cost_usd": compile_cost,
        "breakeven_conversations": breakeven,
        "prices": asdict(prices),
    }
    table = table.with_columns(
        pl.lit(summary["multiplier"]).alias("multiplier"),
        pl.lit(summary["price_factor"]).alias("price_factor"),
        pl.lit(summary["volume_factor"]).alias("volume_factor"),
        pl.lit(compile_cost).alias("compile_cost_usd"),
        pl.lit(breakeven).cast(pl.Int64).alias("breakeven_conversations"),
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
    lines += [
        "",
        f"**Multiplier: {_fmt(summary['multiplier'], 1)}x cheaper**"
        f"{'' if (summary['multiplier'] or 0) >= 1 else ' (below 1: the compiled route costs more)'} = price per token {_fmt(summary['price_factor'], 1)}x "
        f"x token volume {_fmt(summary['volume_factor'], 2)}x.",
        f"One-time compile: ${summary['compile_cost_usd']:.4f} (training compute at ${summary['prices']['compute_per_hour']}/h); "
        f"pays for itself after {summary['breakeven_conversations'] if summary['breakeven_conversations'] is not None else 'n/a'} conversations.",
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
    bars.barh(list(per), list(per.values()), color=["#c0504d", "#4f81bd"])
    bars.set_xscale("log")
    bars.set_xlabel("$ per conversation (log scale)")
    horizon = max(10, 3 * breakeven) if breakeven else 10_000
    n = [0, horizon]
    running.plot(n, [per["frontier_in_context"] * x for x in n], color="#c0504d", label="frontier, procedure in context")
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
