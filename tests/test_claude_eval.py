"""Claude in evaluation, through the real SDK against the local stand-in: the frontier route on
the holdout with measured tokens and dollars, Claude playing the user, and the judge (two models)."""

import json

import polars as pl
import pytest

from conftest import MINI, claude_settings
from subterra.claude_client import Claude
from subterra.claude_spool import ClaudeAnswers, ResponseSpool
from subterra.claude_user import claude_users
from subterra.corpus import CorpusConfig, build_corpus
from subterra.evaluation import EvalConfig, aggregate
from subterra.frontier import evaluate_frontier, versus_frontier
from subterra.judge import CRITERIA, judge_scenarios
from subterra.paths import select_paths
from subterra.teacher import TemplateTeacher
from subterra.workflow import load_workflow

FRONTIER = "claude-sonnet-5-5"
EVAL = EvalConfig(scenarios=2, sets=("holdout", "test_unseen"))  # the generated test sets, as the frontier route plays them


@pytest.fixture(scope="module")
def wf():
    return load_workflow(MINI)


@pytest.fixture(scope="module")
def corpus(wf):
    return build_corpus(wf, select_paths(wf).paths, TemplateTeacher(), CorpusConfig(conversations_per_path=1, holdout_scenarios=2, offscript_rate=0.3, sizing="uniform"))


def answers(fake, folder, wf, **settings) -> ClaudeAnswers:
    return ClaudeAnswers(Claude.from_env(claude_settings(fake, **settings)).client(), ResponseSpool(folder, wf.id))


def test_the_frontier_route_plays_the_holdout_with_measured_tokens_and_dollars(fake_claude, tmp_path, wf, corpus):
    fake_claude.learn(corpus)  # the stand-in answers as the reference agent would
    fake_claude.queue("malformed")  # ...except the very first answer, which is no form
    got = evaluate_frontier(answers(fake_claude, tmp_path, wf, concurrency=1), wf, corpus, FRONTIER, EVAL).scenarios
    assert got.height == 4 and set(got["route"]) == {"frontier"} and set(got["user_simulator"]) == {"scripted"}
    by_id = {r["scenario_id"]: r for r in got.iter_rows(named=True)}
    first = by_id["holdout-00000"]
    assert not first["strict_pass"] and first["forms_valid"] < first["turns"]  # the malformed answer counts against it
    assert json.loads(first["first_error"])["kind"] == "invalid_form"
    assert all(r["strict_pass"] for k, r in by_id.items() if k != "holdout-00000")
    # tokens and dollars are Claude's own usage, summed per conversation (a request another
    # conversation already sent word for word, such as the same opener, is answered from the spool
    # under that conversation's label: checked where a conversation's labels hold all its turns)
    kept = [json.loads(line) for line in (tmp_path / f"{wf.id}.responses.jsonl").read_text().splitlines()]
    complete = 0
    for scenario_id, row in by_id.items():
        mine = [k for k in kept if k["label"].startswith(scenario_id + "#")]
        if len(mine) < row["turns"]:
            continue
        complete += 1
        assert row["tokens_in"] == sum(k["input_tokens"] + k["cache_write_tokens"] + k["cache_read_tokens"] for k in mine)
        assert row["tokens_out"] == sum(k["output_tokens"] for k in mine)
        assert row["usd"] == pytest.approx(sum(k["usd"] for k in mine))
    assert complete >= 3
    scores = aggregate(got)
    assert scores["usd_per_conversation"].to_list() == pytest.approx(
        [got.filter(pl.col("set") == h)["usd"].mean() for h in ("holdout", "test_unseen")])
    # a rerun replays every answer from the spool: nothing is sent again
    sent = fake_claude.count("frontier")
    again = evaluate_frontier(answers(fake_claude, tmp_path, wf), wf, corpus, FRONTIER, EVAL).scenarios
    assert fake_claude.count("frontier") == sent and again.drop("latencies_ms").equals(got.drop("latencies_ms"))


def test_claude_plays_the_user_and_falls_back_when_it_drops_a_value(fake_claude, tmp_path, wf, corpus):
    fake_claude.learn(corpus)
    users = claude_users(answers(fake_claude, tmp_path, wf), "claude-haiku-5-5")
    got = evaluate_frontier(answers(fake_claude, tmp_path, wf), wf, corpus, FRONTIER, EVAL, users=users).scenarios
    assert set(got["user_simulator"]) == {"claude:claude-haiku-5-5"} and got["user_fallbacks"].sum() == 0
    assert got["strict_pass"].all()  # the user's messages were the reference's, worded by the stand-in
    references = {r["conversation_id"]: json.loads(r["messages"]) for r in corpus.iter_rows(named=True)}
    for row in got.iter_rows(named=True):
        said = [t["user"] for t in json.loads(row["transcript"])]
        assert said == [m["content"] for m in references[row["scenario_id"]] if m["role"] == "user"]
    assert fake_claude.count("user") == sum(got["turns"])  # one user message per agent turn
    # an answer that loses the values is replaced by the scripted wording, and counted
    fake_claude.malformed_labels = {"holdout-00001"}
    fresh = tmp_path / "fresh"
    users = claude_users(answers(fake_claude, fresh, wf), "claude-haiku-5-5")
    got = evaluate_frontier(answers(fake_claude, fresh, wf), wf, corpus, FRONTIER, EVAL, users=users).scenarios
    row = got.filter(pl.col("scenario_id") == "holdout-00001").row(0, named=True)
    assert row["user_fallbacks"] >= 1 and row["strict_pass"]


def test_the_judge_scores_five_criteria_with_a_second_judge(fake_claude, tmp_path, wf, corpus):
    fake_claude.learn(corpus)
    fake_claude.queue("malformed")  # holdout-00000 fails at its first turn
    spool = answers(fake_claude, tmp_path, wf, concurrency=1)
    played = evaluate_frontier(spool, wf, corpus, FRONTIER, EVAL).scenarios
    fake_claude.queue("malformed")  # the first judge's first answer is no JSON
    judged = judge_scenarios(spool, wf, played, corpus, ["claude-opus-5-5", "claude-sonnet-5-5"])
    rows = {r["scenario_id"]: r for r in judged.iter_rows(named=True)}
    bad = rows["holdout-00000"]
    assert bad["judge_mean"] is None and all(bad[f"judge_{c}"] is None for c in CRITERIA)
    assert bad["judge_error"].startswith("judge output malformed: not JSON")
    assert bad["judge2_task_success"] == 2  # it never reached the expected end
    good = rows["holdout-00001"]
    assert good["judge_task_success"] == 5 and good["judge_error"] is None
    assert good["judge_naturalness"] == 4 and good["judge2_naturalness"] == 3
    assert good["judge_mean"] == pytest.approx((5 + 4 + 4 + 4 + 4) / 5) and good["judge_model"] == "claude-opus-5-5"
    assert fake_claude.count("judge") == 2 * 4  # every conversation, by each judge
    scores = {r["set"]: r for r in aggregate(judged).iter_rows(named=True)}
    assert scores["holdout"]["judge_judged"] == 1 and scores["holdout"]["judge2_judged"] == 2
    assert scores["holdout"]["judge_mean"] == pytest.approx(good["judge_mean"])
    assert scores["holdout"]["judge2_mean"] == pytest.approx((bad["judge2_mean"] + good["judge2_mean"]) / 2)
    assert scores["test_unseen"]["judges_within_one"] == 1.0 and scores["holdout"]["judge2_model"] == "claude-sonnet-5-5"


def test_share_of_frontier_quality_per_holdout():
    scores = pl.DataFrame({
        "route": ["compiled_prefill", "compiled_prefill", "frontier", "frontier"],
        "set": ["holdout", "test_unseen", "holdout", "test_unseen"],
        "strict_pass": [0.5, 0.25, 1.0, 0.5],
        "judge_mean": [3.0, None, 4.0, 4.0],
    })
    out = versus_frontier(scores)
    assert out["pct_of_frontier_quality"].to_list() == [75.0, None, 100.0, 100.0]
    assert out["pct_of_frontier_strict_pass"].to_list() == [50.0, 50.0, 100.0, 100.0]
    assert versus_frontier(scores.filter(pl.col("route") != "frontier"))["pct_of_frontier_quality"].null_count() == 2
