"""The corpus quality gate on a good corpus, and on broken copies of it: each expectation fails once."""

import json

import polars as pl
import pytest

from subterra.corpus import CorpusConfig, build_corpus
from subterra.paths import select_paths
from subterra.quality import COVERAGE, REJECTED, screen_corpus, validate_corpus
from subterra.teacher import TemplateTeacher
from subterra.training import TrainConfig, measure_lengths
from subterra.workflow import load_workflow

from conftest import MINI

MAX_LENGTH = 2048


@pytest.fixture(scope="module")
def wf():
    return load_workflow(MINI)


@pytest.fixture(scope="module")
def good(wf) -> pl.DataFrame:
    corpus = build_corpus(wf, select_paths(wf).paths, TemplateTeacher(), CorpusConfig(conversations_per_path=2, holdout_scenarios=4, sizing="uniform"))
    lengths = measure_lengths(corpus, wf, TrainConfig(vocab_size=400))
    return corpus.with_columns(pl.Series("n_tokens", lengths, dtype=pl.Int64))


def edit_messages(corpus: pl.DataFrame, row: int, edit) -> pl.DataFrame:
    """``corpus`` with the messages of one row passed through ``edit`` (a function of the message list)."""
    messages = corpus["messages"].to_list()
    conversation = json.loads(messages[row])
    edit(conversation)
    messages[row] = json.dumps(conversation)
    return corpus.with_columns(pl.Series("messages", messages))


def first(corpus: pl.DataFrame, split: str) -> int:
    return corpus["split"].to_list().index(split)


def test_good_corpus_passes_every_expectation(good, wf):
    result = validate_corpus(good, wf, MAX_LENGTH)
    assert result.success, result.markdown()
    assert len(result.results) == 10
    assert result.results[-1] == {"expectation": COVERAGE, "success": True, "observed": f"all {len(wf.nodes) + len(wf.edges)} covered"}


def ends_on_the_user(messages):
    messages.pop()


def empty_user_text(messages):
    messages[1]["content"] = "  "


def unfilled_placeholder(messages):
    messages[1]["content"] = "I'd like to go to {destination}."


def say_naming_a_value_not_held(messages):
    form = json.loads(messages[2]["content"])  # the first assistant turn: nothing is held yet
    messages[2]["content"] = json.dumps({**form, "slots": {}, "say": "So, {passenger_name}, where to?"})


def form_naming_no_node(messages):
    form = json.loads(messages[2]["content"])
    messages[2]["content"] = json.dumps({**form, "node": "nowhere"})


def broken_copies(good: pl.DataFrame, wf):
    train = first(good, "train")
    holdout = first(good, "holdout")
    yield "roles alternate", edit_messages(good, train, ends_on_the_user)
    yield "no empty text", edit_messages(good, train, empty_user_text)
    yield "no unfilled {placeholder}", edit_messages(good, train, unfilled_placeholder)
    yield "no unfilled {placeholder}", edit_messages(good, train, say_naming_a_value_not_held)
    yield "every form parses", edit_messages(good, train, form_naming_no_node)
    yield "length under", good.with_columns(
        pl.when(pl.int_range(pl.len()) == train).then(MAX_LENGTH + 1).otherwise(pl.col("n_tokens")).alias("n_tokens")
    )
    leaked = good["messages"].to_list()
    leaked[train] = leaked[holdout]
    yield "train and holdout disjoint", good.with_columns(pl.Series("messages", leaked))
    ids = good["conversation_id"].to_list()
    ids[train + 1] = ids[train]
    yield "conversation ids unique", good.with_columns(pl.Series("conversation_id", ids))
    yield "splits are", good.filter(pl.col("split") != "test_unseen")
    uses_human = pl.col("edges").list.contains("ask_count>human#2")
    yield COVERAGE, good.filter(~(uses_human & (pl.col("split") == "train")))


@pytest.mark.parametrize("case", range(9))
def test_each_expectation_fails_alone_on_its_own_fault(good, wf, case):
    expected, broken = list(broken_copies(good, wf))[case]
    result = validate_corpus(broken, wf, MAX_LENGTH)
    assert not result.success
    assert len(result.failed) == 1 and result.failed[0].startswith(expected), result.markdown()


def test_scenario_shared_by_train_and_holdout_is_a_leak(good, wf):
    scenarios = good["scenario"].to_list()
    train, holdout = first(good, "train"), first(good, "holdout")
    moved = {**json.loads(scenarios[holdout]), "id": "train-x", "split": "train"}
    scenarios[train] = json.dumps(moved)
    result = validate_corpus(good.with_columns(pl.Series("scenario", scenarios)), wf, MAX_LENGTH)
    assert result.failed == ["train and holdout disjoint (no conversation text or scenario in both)"]


def test_coverage_names_what_is_missing(good, wf):
    result = validate_corpus(good.filter(~((pl.col("split") == "train") & pl.col("nodes").list.contains("human"))), wf, MAX_LENGTH)
    assert result.results[-1]["observed"] == "missing node human, edge ask_count>human#2"
    assert "| every node and edge present in training | **NO** | missing node human" in result.markdown()


def value_not_copied(messages):
    """The first form with a slot keeps a value the user's message before it does not hold verbatim."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and json.loads(m["content"])["slots"]:
            form = json.loads(m["content"])
            slot = next(iter(form["slots"]))
            form["slots"][slot] = form["slots"][slot].upper() + "X"
            messages[i]["content"] = json.dumps(form)
            return
    raise AssertionError("no form with a slot")


def test_a_value_not_copied_verbatim_is_a_bad_form(good, wf):
    result = validate_corpus(edit_messages(good, first(good, "train"), value_not_copied), wf, MAX_LENGTH)
    assert result.failed == ["every form parses, names a real node and copies its values verbatim"]


def test_screening_rejects_malformed_conversations_and_the_gate_bounds_their_share(good, wf):
    holdout = first(good, "holdout")
    broken = edit_messages(good, holdout, value_not_copied)
    errors = [None] * good.height
    errors[holdout + 1] = "teacher output malformed: not JSON (Expecting value at line 1 column 1)"
    broken = broken.with_columns(pl.Series("teacher_error", errors, dtype=pl.String))
    accepted, rejected = screen_corpus(broken, wf)
    assert accepted.height == good.height - 2 and accepted.columns == broken.columns
    assert rejected.columns == ["workflow", "conversation_id", "split", "teacher", "reason"]
    reasons = dict(zip(rejected["conversation_id"], rejected["reason"]))
    ids = good["conversation_id"].to_list()
    assert reasons == {ids[holdout]: "1 bad form(s) (unparseable, unknown node, empty say, or a value not copied verbatim)",
                       ids[holdout + 1]: errors[holdout + 1]}
    assert screen_corpus(good, wf)[1].height == 0 and screen_corpus(good, wf)[0].equals(good)
    # 2 of 20 rejected is more than the gate allows; 0 of 20 is fine
    assert good.height == 20
    result = validate_corpus(accepted, wf, MAX_LENGTH, rejected=rejected.height)
    assert result.failed == [REJECTED] and "2 of 20 rejected" in result.markdown()
    assert validate_corpus(good, wf, MAX_LENGTH, rejected=0).success
