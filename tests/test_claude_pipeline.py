"""The whole compile with every part on Claude (the local stand-in for the API): the teacher's
corpus with a fault mid-corpus and a rerun that requests only the missing conversations, a tiny
training run, a judged evaluation with Claude as the user and the frontier route, and the cost
report. Slow (it trains and evaluates a model): ``make test-all``."""

import json

import polars as pl
import pytest

from subterra_dagster.assets import COMPILE_ASSETS
from test_assets import KEY as WORKFLOW, failure_text, materialize, metadata
from test_claude_assets import claude_resource

pytestmark = pytest.mark.slow


def test_a_compile_with_claude_end_to_end(fake_claude, settings, store, resources, instance, monkeypatch, capsys):
    resources["claude"] = claude_resource(fake_claude, teacher_mode="interactive", concurrency=2,
                                          second_judge_model="claude-sonnet-5-5")
    corpus_stages, later = COMPILE_ASSETS[:4], COMPILE_ASSETS[4:]

    # the corpus: the API goes down after 10 of 16 conversations; the rerun asks for the other 6 only
    fake_claude.outage("teacher", after=10)
    first = materialize(corpus_stages, resources, instance)
    assert not first.success
    assert "6 of 8 teacher requests unanswered" in failure_text(first)
    assert "a rerun requests only the 6 missing" in failure_text(first)
    first_requests, failed_attempts = fake_claude.count("teacher"), fake_claude.count("teacher", "500")
    answered_first = fake_claude.answered["teacher"]
    assert answered_first == 10 and first_requests == 10 + failed_attempts
    fake_claude.outages.clear()
    rerun = materialize(corpus_stages, resources, instance)
    assert rerun.success
    corpus_meta = metadata(rerun, COMPILE_ASSETS[2])
    rerun_requests = fake_claude.count("teacher") - first_requests
    with capsys.disabled():
        print(f"\nClaude teacher, fault mid-corpus: first run {first_requests} requests ({answered_first} "
              f"answered, {failed_attempts} failed attempts); rerun {rerun_requests} requests, "
              f"{corpus_meta['teacher_answers_kept_from_before']} answers kept from before")
    assert rerun_requests == corpus_meta["teacher_answers_requested"] == 6
    assert corpus_meta["teacher_answers_kept_from_before"] == 10
    corpus = store.read("synthetic_corpus", WORKFLOW)
    assert corpus.height == 16 and set(corpus["teacher"]) == {"claude:claude-sonnet-5-5"}

    # training, the judged evaluation with the frontier route, the cost report
    fake_claude.learn(store.read("validated_dataset", WORKFLOW).filter(pl.col("split") != "train"))
    result = materialize(later, resources, instance)
    assert result.success, failure_text(result)
    scores = store.read("eval_scores", WORKFLOW)
    # the tiny student has no pretrained base: its two compiled routes, and the frontier route, play the same scenarios
    assert sorted(zip(scores["route"], scores["set"])) == [
        ("compiled", "holdout"), ("compiled", "test_unseen"), ("compiled_prefill", "holdout"), ("compiled_prefill", "test_unseen"),
        ("frontier", "holdout"), ("frontier", "test_unseen")]
    assert set(scores["user_simulator"]) == {"claude:claude-haiku-5-5"}
    assert scores["judge_mean"].null_count() == 0 and scores["judge2_mean"].null_count() == 0
    by = {(r["route"], r["set"]): r for r in scores.iter_rows(named=True)}
    compiled, frontier = by[("compiled_prefill", "holdout")], by[("frontier", "holdout")]
    assert compiled["pct_of_frontier_quality"] == pytest.approx(100 * compiled["judge_mean"] / frontier["judge_mean"])
    assert frontier["pct_of_frontier_quality"] == 100.0 and frontier["strict_pass"] == 1.0
    assert frontier["usd_per_conversation"] > 0 and compiled["usd_per_conversation"] is None
    scenarios = store.read("eval_scenarios", WORKFLOW)
    assert scenarios.height == 12 and scenarios["judge_task_success"].null_count() == 0
    # every conversation of every route judged by both judges
    assert fake_claude.count("judge") == 24 and fake_claude.count("frontier") > 0 and fake_claude.count("user") > 0

    cost = store.read("cost_report", WORKFLOW)
    assert list(zip(cost["route"], cost["set"])) == [
        ("frontier_in_context", "holdout"), ("frontier_measured", "holdout"), ("frontier_measured", "test_unseen"),
        ("compiled", "holdout"), ("compiled", "test_unseen"), ("compiled_prefill", "holdout"), ("compiled_prefill", "test_unseen")]
    measured = cost.filter((pl.col("route") == "frontier_measured") & (pl.col("set") == "holdout")).row(0, named=True)
    assert measured["usd_per_conversation"] == pytest.approx(frontier["usd_per_conversation"])
    row = cost.row(0, named=True)
    teacher_usd = float(corpus["teacher_usd"].sum())
    assert teacher_usd > 0 and row["teacher_cost_usd"] == pytest.approx(teacher_usd)
    assert row["compile_cost_usd"] == pytest.approx(row["training_cost_usd"] + teacher_usd)
    parts = json.loads(row["claude_parts"])
    assert parts["teacher"].startswith("claude-sonnet-5-5: 16 conversations") and parts["frontier"] == "measured on the holdout"
    assert parts["judge"] == "claude-opus-5-5, second judge claude-sonnet-5-5" and parts["user"] == "claude-haiku-5-5"
    report = metadata(result, COMPILE_ASSETS[6])["report"]
    assert f"**{row['pct_of_frontier_quality']:,.1f}% of frontier quality**" in report and "than frontier_measured" in report

    from subterra_dagster.cli import main

    monkeypatch.setenv("SUBTERRA_DATA_DIR", str(settings.data_dir))
    assert main(["report", WORKFLOW]) == 0
    out = capsys.readouterr().out
    assert "== Claude" in out and "% of frontier quality (judged, holdout)" in out and "teacher: claude-sonnet-5-5: 16" in out
    assert "\nserving: " in out  # which model answers, and why

    # a repair round: its candidate is played by the same Claude user as the compile's evaluation
    from subterra_dagster.assets import REPAIR_ASSETS
    from subterra_dagster.assets.settings import RepairSettings

    repair = RepairSettings(rounds=1, per_failure=1, max_per_cluster=2, max_conversations=4, replay_ratio=0.5, max_steps=2)
    repaired = materialize(REPAIR_ASSETS, resources, instance, promoted_model=repair)
    assert repaired.success, failure_text(repaired)
    assert store.read("repair_map", WORKFLOW).filter(pl.col("route") == "compiled_prefill").height  # a round ran
    # (its messages come from the spool where the candidate says what the compiled model said)
    assert set(store.read("repair_scores", WORKFLOW)["user_simulator"]) == {"claude:claude-haiku-5-5"}
    assert sorted(store.read("promotions", WORKFLOW)["round"].to_list()) == [0, 1]
    ladder = store.read("ladder", WORKFLOW)
    frontier_rows = ladder.filter(pl.col("route") == "frontier")
    assert frontier_rows.height == 2 and frontier_rows["usd_per_conversation"].is_not_null().all()
