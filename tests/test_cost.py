"""Cost report arithmetic: frontier tokens with the procedure re-sent every turn, the compiled
model's measured tokens, the multiplier and its two factors, compile cost and break-even."""

import base64
import math

import polars as pl
import pytest

from conftest import MINI
from subterra.cost import CHARS_PER_TOKEN, Prices, build_cost_report, frontier_tokens
from subterra.procedure import render_procedure
from subterra.workflow import load_workflow


@pytest.fixture(scope="module")
def wf():
    return load_workflow(MINI)


CONVERSATION = [
    {"role": "system", "content": "You are Mini Air's booking assistant."},
    {"role": "user", "content": "u" * 40},
    {"role": "assistant", "content": "a" * 80},
    {"role": "user", "content": "v" * 20},
    {"role": "assistant", "content": "b" * 60},
]
SCORES = pl.DataFrame(
    {
        "workflow": ["mini_booking"] * 2,
        "route": ["compiled_prefill"] * 2,
        "set": ["holdout", "test_unseen"],
        "tokens_in": [300.0, 999.0],
        "tokens_out": [40.0, 999.0],
    }
)


def test_procedure_names_every_step_slot_and_branch(wf):
    text = render_procedure(wf)
    assert text.startswith(wf.assistant)
    for node in wf.nodes:
        assert f"- {node}:" in text
    for slot in wf.slots:
        assert f"- {slot} (" in text
    assert "If the user wants a person, go to human." in text


def test_frontier_resends_procedure_and_history_every_turn(wf):
    p = len(render_procedure(wf))
    tokens_in, tokens_out = frontier_tokens(wf, [CONVERSATION])
    assert tokens_in == pytest.approx(((p + 40) + (p + 40 + 80 + 20)) / CHARS_PER_TOKEN)
    assert tokens_out == pytest.approx((80 + 60) / CHARS_PER_TOKEN)
    # the mean over conversations
    assert frontier_tokens(wf, [CONVERSATION, CONVERSATION[:3]])[1] == pytest.approx((140 + 80) / 2 / CHARS_PER_TOKEN)


def test_multiplier_is_price_factor_times_volume_factor(wf):
    prices = Prices(compute_per_hour=3.6)
    table, summary, markdown = build_cost_report(wf, SCORES, {"train_seconds": 600.0}, [CONVERSATION], prices)
    f_in, f_out = frontier_tokens(wf, [CONVERSATION])
    frontier = (f_in * 3.00 + f_out * 15.00) / 1e6
    compiled = (300 * 0.05 + 40 * 0.23) / 1e6  # the "holdout" row, measured
    rows = {(r["route"], r["set"]): r for r in table.iter_rows(named=True)}
    assert rows[("frontier_in_context", "holdout")]["usd_per_conversation"] == pytest.approx(frontier)
    assert rows[("compiled_prefill", "holdout")]["usd_per_conversation"] == pytest.approx(compiled)
    assert rows[("compiled_prefill", "test_unseen")]["usd_per_conversation"] == pytest.approx((999 * 0.05 + 999 * 0.23) / 1e6)
    assert rows[("frontier_in_context", "holdout")]["token_source"] == "estimated, 4 chars/token"
    assert rows[("compiled_prefill", "holdout")]["token_source"].startswith("measured")
    assert summary["deployed_route"] == "compiled_prefill"
    assert summary["multiplier"] == pytest.approx(frontier / compiled)
    assert summary["volume_factor"] == pytest.approx((f_in + f_out) / 340)
    assert summary["price_factor"] * summary["volume_factor"] == pytest.approx(summary["multiplier"])
    assert summary["compile_cost_usd"] == pytest.approx(600 / 3600 * 3.6)
    assert summary["breakeven_conversations"] == math.ceil(0.6 / (frontier - compiled))
    assert set(table["workflow"]) == {"mini_booking"}
    assert table["breakeven_conversations"].to_list() == [summary["breakeven_conversations"]] * 3


def test_every_route_is_priced_and_the_frontier_from_the_orchestrated_tokens(wf):
    """With the orchestrated route evaluated, the frontier is priced at frontier prices from its
    measured tokens (labelled so); every local route at the self-hosted prices."""
    ladder = pl.DataFrame(
        {
            "workflow": ["mini_booking"] * 4,
            "route": ["orchestrated", "orchestrated_prefill", "compiled", "compiled_prefill"],
            "set": ["holdout"] * 4,
            "tokens_in": [9000.0, 8800.0, 700.0, 690.0],
            "tokens_out": [400.0, 90.0, 300.0, 80.0],
        }
    )
    table, summary, _ = build_cost_report(wf, ladder, {"train_seconds": 60.0}, [CONVERSATION])
    rows = {r["route"]: r for r in table.iter_rows(named=True)}
    assert set(rows) == {"frontier_in_context", "orchestrated", "orchestrated_prefill", "compiled", "compiled_prefill"}
    frontier = rows["frontier_in_context"]
    assert (frontier["tokens_in"], frontier["tokens_out"]) == (9000.0, 400.0)
    assert frontier["usd_per_conversation"] == pytest.approx((9000 * 3.00 + 400 * 15.00) / 1e6)
    assert frontier["token_source"].startswith("orchestrated route's measured tokens")
    assert rows["orchestrated"]["usd_per_conversation"] == pytest.approx((9000 * 0.05 + 400 * 0.23) / 1e6)
    assert summary["multiplier"] == pytest.approx(frontier["usd_per_conversation"] / rows["compiled_prefill"]["usd_per_conversation"])


def test_markdown_has_the_numbers_and_a_png_chart(wf):
    _, summary, markdown = build_cost_report(wf, SCORES, {"train_seconds": 600.0}, [CONVERSATION])
    assert f"{summary['multiplier']:,.1f}x cheaper" in markdown
    assert f"pays for itself after {summary['breakeven_conversations']} conversations" in markdown
    image = markdown.split("data:image/png;base64,")[1].rstrip(")")
    assert base64.b64decode(image).startswith(b"\x89PNG")


def test_no_break_even_when_the_compiled_route_is_not_cheaper(wf):
    expensive = Prices(compiled_input_per_m=1e4, compiled_output_per_m=1e4)
    _, summary, markdown = build_cost_report(wf, SCORES, {"train_seconds": 60.0}, [CONVERSATION], expensive)
    assert summary["breakeven_conversations"] is None
    assert "pays for itself after n/a conversations" in markdown


def test_the_break_even_reads_as_a_person_writes_it():
    from subterra.cost import _after

    assert _after(1) == "after 1 conversation"
    assert _after(1200) == "after 1,200 conversations"
    assert _after(None) == "after n/a conversations"
