"""The cost report: every evaluated route priced from its measured tokens per conversation, and a
frontier model with the procedure re-injected every turn; the multiplier of the frontier over the
deployed route and its two factors; the one-time cost of a compile and the number of
conversations after which it has paid for itself."""

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


FRONTIER = "frontier_in_context"
SELF_HOSTED = "self-hosted (compiled prices)"


def route_prices(route: str, prices: Prices) -> tuple[float, float]:
    """$ per million (input, output) tokens of a route: frontier prices for a frontier route, the
    self-hosted small model's for every local one (base or fine-tuned, the same 135M model)."""
    if route in (FRONTIER, "frontier"):
        return prices.frontier_input_per_m, prices.frontier_output_per_m
    return prices.compiled_input_per_m, prices.compiled_output_per_m


def _row(wf, route: str, holdout: str, tokens_in: float, tokens_out: float, source: str, prices: Prices) -> dict:
    p_in, p_out = route_prices(route, prices)
    cost = (tokens_in * p_in + tokens_out * p_out) / 1e6
    total = tokens_in + tokens_out
    return {
        "workflow": wf.id,
        "route": route,
        "holdout": holdout,
        "tokens_in": float(tokens_in),
        "tokens_out": float(tokens_out),
        "usd_per_conversation": cost,
        "usd_per_million_tokens": cost / total * 1e6 if total else 0.0,
        "token_source": source,
    }


def build_cost_report(
    wf, scores: pl.DataFrame, training: dict, reference_messages: list[list[dict]], prices: Prices = Prices()
) -> tuple[pl.DataFrame, dict, str]:
    """The cost comparison for one workflow: (table with one row per route x holdout, summary, Markdown).

    ``scores`` is the ``eval_scores`` table: every evaluated route is priced from its measured
    tokens per conversation. The frontier model with the procedure in context is priced at
    frontier prices from, in order of preference: a measured ``frontier`` route; the
    ``orchestrated`` route's measured tokens (the same procedure and history sent every turn,
    counted by the small model's tokenizer — labelled as such); or, with neither, an estimate
    from the characters of ``reference_messages`` (the holdout conversations). The summary's
    multiplier compares the frontier with the deployed route (``compiled_prefill``, else
    ``compiled``) on ``holdout``; ``training``'s ``train_seconds`` price the compile.
    """
    rows = []
    measured = {(r["route"], r["holdout"]): r for r in scores.iter_rows(named=True)}
    holdouts = list(dict.fromkeys(r["holdout"] for r in scores.iter_rows(named=True)))
    for holdout in holdouts:
        if ("frontier", holdout) in measured:
            r = measured[("frontier", holdout)]
            rows.append(_row(wf, FRONTIER, holdout, r["tokens_in"], r["tokens_out"], "measured (frontier route)", prices))
        elif ("orchestrated", holdout) in measured:
            r = measured[("orchestrated", holdout)]
            rows.append(_row(wf, FRONTIER, holdout, r["tokens_in"], r["tokens_out"],
                             "orchestrated route's measured tokens (small model's tokenizer), at frontier prices", prices))
        elif holdout == "holdout":
            f_in, f_out = frontier_tokens(wf, reference_messages)
            rows.append(_row(wf, FRONTIER, holdout, f_in, f_out, f"estimated, {CHARS_PER_TOKEN:g} chars/token", prices))
    for (route, holdout), r in measured.items():
        if route != "frontier":
            rows.append(_row(wf, route, holdout, r["tokens_in"], r["tokens_out"], f"measured in eval, {SELF_HOSTED}", prices))
    table = pl.DataFrame(rows)
    by = {(r["route"], r["holdout"]): r for r in rows}
    deployed = next((route for route in ("compiled_prefill", "compiled") if (route, "holdout") in by), None)
    if deployed is None or (FRONTIER, "holdout") not in by:
        raise ValueError(f"{wf.id}: the cost report needs the frontier and a compiled route on 'holdout'")
    f, c = by[(FRONTIER, "holdout")], by[(deployed, "holdout")]
    f_cost, c_cost = f["usd_per_conversation"], c["usd_per_conversation"]
    f_tokens, c_tokens = f["tokens_in"] + f["tokens_out"], c["tokens_in"] + c["tokens_out"]
    f_price = f_cost / max(1e-9, f_tokens)
    c_price = c_cost / max(1e-9, c_tokens)
    compile_cost = float(training.get("train_seconds", 0.0)) / 3600 * prices.compute_per_hour
    saving = f_cost - c_cost
    breakeven = math.ceil(compile_cost / saving) if saving > 0 else None
    summary = {
        "deployed_route": deployed,
        "multiplier": f_cost / c_cost if c_cost > 0 else None,
        "price_factor": f_price / c_price if c_price > 0 else None,
        "volume_factor": f_tokens / c_tokens if c_tokens > 0 else None,
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
        "| route | holdout | tokens in | tokens out | $ / conversation | $ / M tokens | token counts |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in table.iter_rows(named=True):
        lines.append(
            f"| {r['route']} | {r['holdout']} | {r['tokens_in']:,.0f} | {r['tokens_out']:,.0f} | {r['usd_per_conversation']:.6f} | "
            f"{r['usd_per_million_tokens']:.3f} | {r['token_source']} |"
        )
    lines += [
        "",
        f"**Multiplier ({FRONTIER} vs {summary['deployed_route']}, holdout): {_fmt(summary['multiplier'], 1)}x cheaper**"
        f"{'' if (summary['multiplier'] or 0) >= 1 else ' (below 1: the compiled route costs more)'} = price per token {_fmt(summary['price_factor'], 1)}x "
        f"x token volume {_fmt(summary['volume_factor'], 2)}x.",
        f"One-time compile: ${summary['compile_cost_usd']:.4f} (training compute at ${summary['prices']['compute_per_hour']}/h); "
        f"pays for itself after {summary['breakeven_conversations'] if summary['breakeven_conversations'] is not None else 'n/a'} conversations.",
        "",
        f"![cost per conversation](data:image/png;base64,{cost_chart(table, summary['deployed_route'], summary['compile_cost_usd'], summary['breakeven_conversations'])})",
    ]
    return "\n".join(lines)


def cost_chart(table: pl.DataFrame, deployed: str, compile_cost: float, breakeven: int | None) -> str:
    """Two panels as base64 PNG: $ per conversation of each route on ``holdout`` (log scale), and
    the running cost over conversations of the frontier and the ``deployed`` route, with the
    compile's one-time cost and the break-even point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = table.filter(pl.col("holdout") == "holdout")
    per = dict(zip(held["route"].to_list(), held["usd_per_conversation"].to_list()))
    fig, (bars, running) = plt.subplots(1, 2, figsize=(9, 2.8), dpi=100)
    bars.barh(list(per), list(per.values()), color=["#c0504d" if r == FRONTIER else "#4f81bd" for r in per])
    bars.set_xscale("log")
    bars.set_xlabel("$ per conversation (log scale)")
    horizon = max(10, 3 * breakeven) if breakeven else 10_000
    n = [0, horizon]
    running.plot(n, [per[FRONTIER] * x for x in n], color="#c0504d", label="frontier, procedure in context")
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
