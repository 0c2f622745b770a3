"""The ladder table: every route side by side, priced, with the promoted model's own row."""

import polars as pl
import pytest

from subterra.ladder import build_ladder, format_ladder

ROUTES = ["compiled_prefill", "orchestrated", "compiled", "orchestrated_prefill"]  # any order in


def scores(route_rows: dict[str, tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"workflow": "travel_booking", "route": route, "set": "holdout", "scenarios": 24, "strict_pass": strict,
             "partial_credit": 0.5, "slot_accuracy": 0.7, "form_validity": 0.9, "failure_rate": 0.1,
             "tokens_in": tin, "tokens_out": tout, "latency_p50_ms": 40.0}
            for route, (strict, tin, tout) in route_rows.items()
        ]
    )


SCORES = scores({"compiled_prefill": (0.9, 600.0, 100.0), "orchestrated": (0.0, 9000.0, 500.0),
                 "compiled": (0.7, 600.0, 400.0), "orchestrated_prefill": (0.2, 9000.0, 100.0)})
COST = pl.DataFrame(
    [{"route": r, "set": "holdout", "tokens_in": tin, "tokens_out": tout, "usd_per_conversation": (tin * 0.05 + tout * 0.23) / 1e6}
     for r, tin, tout in [("compiled_prefill", 600.0, 100.0), ("orchestrated", 9000.0, 500.0), ("compiled", 600.0, 400.0),
                          ("orchestrated_prefill", 9000.0, 100.0)]]
    + [{"route": "frontier_in_context", "set": "holdout", "tokens_in": 9000.0, "tokens_out": 500.0, "usd_per_conversation": 0.0345}]
)


def test_the_ladder_lists_every_route_in_ladder_order_with_its_price():
    ladder = build_ladder(SCORES, COST)
    assert ladder["route"].to_list() == ["orchestrated", "orchestrated_prefill", "compiled", "compiled_prefill"]
    row = ladder.filter(pl.col("route") == "compiled_prefill").row(0, named=True)
    assert row["tokens_per_conversation"] == 700.0 and row["model"] == "compiled"
    assert row["usd_per_conversation"] == pytest.approx((600 * 0.05 + 100 * 0.23) / 1e6)
    assert ladder.filter(pl.col("route") == "orchestrated")["model"].to_list() == ["base"]
    text = format_ladder(ladder)
    assert "-- holdout (seen phrasings, test) (24 conversations per route)" in text and "orchestrated_prefill" in text
    assert "$/conv" in text


def test_the_ladder_shows_the_natural_and_unseen_test_sets_first_with_their_intervals():
    rows = []
    for name in ("validation", "holdout", "test_unseen", "natural"):
        rows += [{**r, "set": name, "strict_pass_low": r["strict_pass"] - 0.1, "strict_pass_high": r["strict_pass"] + 0.05}
                 for r in SCORES.iter_rows(named=True)]
    ladder = build_ladder(pl.DataFrame(rows), COST)
    assert list(dict.fromkeys(ladder["set"])) == ["natural", "test_unseen", "holdout", "validation"]
    text = format_ladder(ladder)
    assert text.index("-- natural") < text.index("-- test_unseen") < text.index("-- holdout") < text.index("-- validation")
    assert "95% CI" in text and "0.8-0.95" in text  # compiled_prefill's 0.9 with its interval


def test_a_promoted_repair_round_gets_its_own_row():
    promotions = pl.DataFrame([{"round": 0, "model_dir": "m/abc", "promoted": True},
                               {"round": 1, "model_dir": "m/abc-repair1", "promoted": True}])
    repair_scores = scores({"compiled_prefill": (0.95, 650.0, 90.0)}).with_columns(
        pl.lit(1).alias("round"), pl.lit("m/abc-repair1").alias("model_dir"))
    ladder = build_ladder(SCORES, COST, promotions, repair_scores)
    assert ladder["route"].to_list()[-1] == "compiled_prefill@round1"
    row = ladder.row(ladder.height - 1, named=True)
    assert row["strict_pass"] == 0.95 and row["model"] == "promoted (repair round 1)"
    assert row["usd_per_conversation"] == pytest.approx((600 * 0.05 + 100 * 0.23) / 1e6 / 700 * 740)
    refused = promotions.with_columns(pl.Series("model_dir", ["m/abc", "m/abc"]))
    assert "compiled_prefill@round1" not in build_ladder(SCORES, COST, refused, repair_scores)["route"].to_list()
