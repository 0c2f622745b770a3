"""The corpus quality gate on a good corpus, and on broken copies of it: each expectation fails once."""

import json

import polars as pl
import pytest

from subterra.corpus import CorpusConfig, build_corpus
from subterra.paths import select_paths
from subterra.quality import COVERAGE, validate_corpus
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
    corpus = build_corpus(wf, select_paths(wf).paths, TemplateTeacher(), CorpusConfig(conversations_per_path=2, holdout_scenarios=4))
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
    assert len(result.results) == 9
    assert result.results[-1] == {"expectation": COVERAGE, "success": True, "observed": f"all {len(wf.nodes) + len(wf.edges)} covered"}


def ends_on_the_user(messages):
    messages.pop()


def empty_user_text(messages):
    messages[1]["content"] = "  "


def unfilled_placeholder(messages):
    messages[1]["content"] = "I'd like to go to {destination}."


def form_naming_no_node(messages):
    form = json.loads(messages[2]["content"])
    messages[2]["content"] = json.dumps({**form, "node": "nowhere"})


def broken_copies(good: pl.DataFrame, wf):
    train = first(good, "train")
    holdout = first(good, "holdout")
    yield "roles alternate", edit_messages(good, train, ends_on_the_user)
    yield "no empty text", edit_messages(good, train, empty_user_text)
    yield "no unfilled {placeholder}", edit_messages(good, train, unfilled_placeholder)
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
    yield "splits are", good.filter(pl.col("split") != "holdout_unseen")
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
