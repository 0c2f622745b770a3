"""The repair map, a repair round's conversations, and the promotion gate."""

import json

import polars as pl
import pytest

from subterra.promotion import decide
from subterra.repair import (
    RepairConfig, cluster_name, failure_site, repair_conversations, repair_map, repair_training_set, training_phrasing,
)
from subterra.scenario import Scenario
from subterra.slot_values import SlotValueSource, value_side
from subterra.teacher import TemplateTeacher


def failed(route, scenario_id, kind, expected, got=None, edge=None, user_kind="answer", slot=None, holdout="holdout"):
    error = {"turn": 2, "expected_node": expected, "got_node": got or expected, "expected_slots": {}, "got_slots": {},
             "user_kind": user_kind, "edge": edge, "slot": slot, "kind": kind}
    return {"workflow": "mini_booking", "route": route, "set": holdout, "scenario_id": scenario_id,
            "strict_pass": False, "first_error": json.dumps(error)}


def passed(route, scenario_id, holdout="holdout"):
    return {"workflow": "mini_booking", "route": route, "set": holdout, "scenario_id": scenario_id,
            "strict_pass": True, "first_error": None}


EVAL = pl.DataFrame(
    [
        failed("compiled_prefill", "holdout-00000", "wrong_node", "confirm", "cancel", edge="ask_count>confirm#0"),
        failed("compiled_prefill", "holdout-00001", "wrong_node", "confirm", "human", edge="ask_count>confirm#0"),
        failed("compiled_prefill", "test_unseen-00001", "wrong_node", "confirm", "done", edge="ask_count>confirm#0",
               holdout="test_unseen"),
        failed("compiled_prefill", "holdout-00002", "wrong_node", "ask_date", "ask_count", user_kind="unclear"),
        failed("compiled_prefill", "holdout-00003", "wrong_slot", "ask_date", edge="greet>ask_date", slot="destination"),
        passed("compiled_prefill", "holdout-00004"),
        failed("orchestrated", "holdout-00000", "invalid_form", "greet", "", user_kind="opener"),
        failed("orchestrated", "holdout-00001", "invalid_form", "greet", "", user_kind="opener"),
    ]
)


def test_repair_map_clusters_failures_by_where_they_happen():
    table = repair_map(EVAL)
    rows = {(r["route"], r["cluster"]): r for r in table.iter_rows(named=True)}
    edge = rows[("compiled_prefill", "wrong_node at confirm via ask_count>confirm#0")]
    assert (edge["failures"], edge["scenarios"], edge["share"]) == (3, 6, 0.5)
    assert json.loads(edge["holdouts"]) == {"holdout": 2, "test_unseen": 1}
    assert [e["got"]["node"] for e in json.loads(edge["examples"])] == ["cancel", "human", "done"]
    offscript = rows[("compiled_prefill", "wrong_node at ask_date after unclear")]
    assert (offscript["offscript"], offscript["edge"], offscript["failures"]) == ("unclear", None, 1)
    slot = rows[("compiled_prefill", "wrong_slot at ask_date via greet>ask_date [destination]")]
    assert slot["slot"] == "destination"
    assert rows[("orchestrated", "invalid_form at greet")]["failures"] == 2
    assert table.height == 4 and table["failures"].sum() == 7  # every failure in exactly one cluster
    assert table.filter(pl.col("route") == "compiled_prefill")["failures"].to_list() == [3, 1, 1]  # most first


def test_a_repair_round_writes_training_conversations_through_the_failing_clusters(mini_workflow, corpus):
    from subterra.paths import select_paths

    clusters = repair_map(EVAL).filter(pl.col("route") == "compiled_prefill")
    paths = select_paths(mini_workflow, cap=100, seed=0).paths
    held = set(corpus.filter(pl.col("split") != "train")["messages"])
    config = RepairConfig(per_failure=3, max_per_cluster=5, offscript_rate=0.0, seed=0)
    repair = repair_conversations(mini_workflow, clusters, paths, TemplateTeacher(), held, 1, config)
    assert repair.height == 5 + 3 + 3  # min(5, 3 x 3) + 3 x 1 + 3 x 1
    assert set(repair["split"]) == {"train"} and all(i.startswith("repair1-") for i in repair["conversation_id"])
    assert not set(repair["messages"]) & held
    through_edge = repair.head(5)
    assert all("ask_count>confirm#0" in edges for edges in through_edge["edges"])
    unclear = repair.slice(5, 3)
    for row in unclear.iter_rows(named=True):  # the user goes off-script exactly where the model failed
        assert "unclear" in row["offscript"]
        assert json.loads(row["scenario"])["offscript"] == {"ask_date#1": "unclear"}
    for text in repair["scenario"]:
        scenario = Scenario.from_json(text)
        assert not any(value_side(mini_workflow.slots[slot].type, value) != "train" for slot, value in scenario.values.items()
                       if not SlotValueSource.for_slot(mini_workflow.slots[slot]).closed())
    train = corpus.filter(pl.col("split") == "train")
    mixed = repair_training_set(train, repair, RepairConfig(replay_ratio=0.5))
    assert mixed.height == repair.height + round(0.5 * repair.height)
    assert set(mixed["conversation_id"]) >= set(repair["conversation_id"])


def test_repair_users_speak_the_phrasings_the_compile_trained_on(mini_workflow):
    """A compile with ``phrasings: wide`` trained on the wide pool: its repair round's users speak
    that pool too (and still never a held-back line); a core compile's repair users speak core."""
    from subterra.corpus import CorpusConfig, build_corpus
    from subterra.paths import select_paths
    from subterra.phrasing import SEEN, WIDE

    paths = select_paths(mini_workflow, cap=100, seed=0).paths
    clusters = repair_map(EVAL).filter(pl.col("route") == "compiled_prefill")
    config = RepairConfig(per_failure=3, max_per_cluster=5, offscript_rate=0.3, seed=0)
    for setting, pool in (("core", SEEN), ("wide", WIDE)):
        corpus = build_corpus(mini_workflow, paths, TemplateTeacher(),
                              CorpusConfig(conversations_per_path=3, holdout_scenarios=6, phrasings=setting, sizing="uniform"))
        train = corpus.filter(pl.col("split") == "train")
        assert training_phrasing(train) == pool
        held = set(corpus.filter(pl.col("split") != "train")["messages"])
        repair = repair_conversations(mini_workflow, clusters, paths, TemplateTeacher(), held, 1, config, phrasing=pool)
        assert {Scenario.from_json(t).phrasing for t in repair["scenario"]} == {pool}
        assert not set(repair["messages"]) & held
    with pytest.raises(ValueError, match="one phrasing pool"):
        training_phrasing(pl.concat([train, corpus.filter(pl.col("split") == "test_unseen")]))


def gate(before_failures: dict[str, str], after_failures: dict[str, str], n=6) -> tuple:
    """eval_scenarios frames of n scenarios: the named ones fail at the given step, the rest pass."""
    def frame(failures):
        rows = []
        for i in range(n):
            sid = f"holdout-{i:05d}"
            rows.append(failed("compiled_prefill", sid, "wrong_node", failures[sid]) if sid in failures else passed("compiled_prefill", sid))
        return pl.DataFrame(rows)
    return frame(before_failures), frame(after_failures)


def test_the_gate_promotes_only_if_strict_pass_improves_and_no_cluster_grows():
    before, after = gate({"holdout-00000": "confirm", "holdout-00001": "confirm", "holdout-00002": "greet"},
                         {"holdout-00000": "confirm"})
    decision = decide(before, after, "compiled_prefill")
    assert decision.promoted and decision.reason.startswith("promoted")
    assert (decision.strict_before, decision.strict_after) == (pytest.approx(0.5), pytest.approx(5 / 6))
    changes = {r["cluster"]: (r["before"], r["after"]) for r in decision.changes.iter_rows(named=True)}
    assert changes == {"wrong_node at confirm": (2, 1), "wrong_node at greet": (1, 0)}


def test_the_gate_refuses_when_the_holdout_gets_worse():
    before, after = gate({"holdout-00000": "confirm"}, {"holdout-00000": "confirm", "holdout-00003": "confirm"})
    decision = decide(before, after, "compiled_prefill")
    assert not decision.promoted
    assert decision.reason.startswith("refused") and "did not improve" in decision.reason
    assert decision.regressed == ["wrong_node at confirm"]


def test_the_gate_refuses_when_a_cluster_grows_even_if_strict_pass_improves():
    before, after = gate({"holdout-00000": "confirm", "holdout-00001": "confirm", "holdout-00002": "confirm"},
                         {"holdout-00004": "greet"})
    decision = decide(before, after, "compiled_prefill")
    assert decision.strict_after > decision.strict_before and not decision.promoted
    assert "cluster(s) grew: wrong_node at greet (0 -> 1)" in decision.reason
    assert decide(before, after, "compiled_prefill", tolerance=1).promoted  # unless within the tolerance


def test_failure_site_and_cluster_name():
    site = failure_site(json.dumps({"kind": "wrong_slot", "expected_node": "ask_date", "user_kind": "correction",
                                    "edge": None, "slot": "date"}))
    assert site == {"kind": "wrong_slot", "node": "ask_date", "edge": None, "offscript": "correction", "slot": "date"}
    assert cluster_name(site) == "wrong_slot at ask_date after correction [date]"
