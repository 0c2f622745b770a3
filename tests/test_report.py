"""`subterra report` as a person reads it: within 100 columns, money with its digits."""

import polars as pl

from subterra.report import WIDTH, format_report, money


def test_the_report_fits_100_columns_and_shows_money_with_its_digits():
    assert money(0.000319) == "$0.000319" and money(0.0531) == "$0.0531" and money(58.4) == "$58.40"
    assert money(1234.5) == "$1,234" and money(0) == "$0"
    scores = pl.DataFrame([
        {"route": "compiled_prefill", "set": s, "scenarios": n, "strict_pass": p, "strict_pass_low": p - 0.05,
         "strict_pass_high": p + 0.05, "failure_rate": 0.1, "failure_rate_low": 0.05, "failure_rate_high": 0.2,
         "partial_credit": 0.5}
        for s, n, p in (("validation", 200, 0.5), ("natural", 100, 0.25), ("holdout", 200, 0.9))
    ])
    cost = pl.DataFrame([
        {"route": "frontier_in_context", "set": "holdout", "usd_per_conversation": 0.0533, "multiplier": 177.7,
         "price_factor": 50.0, "volume_factor": 3.55, "compile_cost_usd": 0.0584, "breakeven_conversations": 2},
        {"route": "compiled_prefill", "set": "holdout", "usd_per_conversation": 0.000319, "multiplier": 177.7,
         "price_factor": 50.0, "volume_factor": 3.55, "compile_cost_usd": 0.0584, "breakeven_conversations": 2},
    ])
    training = {"params": 2_402_112, "steps": 1032, "train_seconds": 330.0, "tokens_per_second": 4800.0}
    text = format_report("travel_booking", scores, cost, training, "the compiled model held: " + "why " * 40,
                         "data/models/travel_booking/" + "x" * 120, "data/subterra.duckdb")
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    rows = [line for line in text.splitlines() if line.startswith(("natural", "holdout", "validation"))]
    assert [r.split()[0] for r in rows] == ["natural", "holdout", "validation"]  # the test sets first
    assert "compiled $0.000319, frontier $0.0533" in text and "100 0.250" not in text
    assert "0.250 (0.20-0.30)" in text


def test_progress_says_how_far_how_fast_and_when_it_ends(monkeypatch):
    import subterra.progress as progress

    clock = iter([0.0, 120.0, 240.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = []
    meter = progress.Progress("eval compiled_prefill", lines.append)
    meter(50, 200)
    meter(200, 200)
    assert lines == ["eval compiled_prefill: 50/200 conversations, 25.0 per minute, about 6 min left",
                     "eval compiled_prefill: 200/200 conversations, 50.0 per minute"]
