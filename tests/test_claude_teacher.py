"""Claude as the teacher, through the real SDK against the local stand-in: the corpus it writes,
interactively and as Message Batches, with faults mid-corpus, resumption, and malformed answers
rejected by the gate."""

import json

import polars as pl
import pytest

from conftest import MINI, claude_settings
from subterra.claude_client import Claude, ClaudeError, price_of
from subterra.claude_spool import ClaudeAnswers, ClaudeIncomplete, ResponseSpool
from subterra.claude_teacher import INSTRUCTIONS, PROCEDURE_HEADER, ClaudeTeacher
from subterra.corpus import CorpusConfig, build_corpus
from subterra.paths import select_paths
from subterra.procedure import render_procedure
from subterra.quality import screen_corpus
from subterra.teacher import TemplateTeacher
from subterra.workflow import load_workflow

CONFIG = CorpusConfig(conversations_per_path=2, holdout_scenarios=3, validation_scenarios=0, offscript_rate=0.3, sizing="uniform")  # the teacher, not the splits
MODEL = "claude-sonnet-5-5"


@pytest.fixture(scope="module")
def wf():
    return load_workflow(MINI)


@pytest.fixture(scope="module")
def paths(wf):
    return select_paths(wf).paths


@pytest.fixture(scope="module")
def template(wf, paths):
    return build_corpus(wf, paths, TemplateTeacher(), CONFIG)


def claude_corpus(fake, folder, wf, paths, **settings):
    """A corpus from a fresh run of the Claude teacher (a new process would start the same way)."""
    answers = ClaudeAnswers(Claude.from_env(claude_settings(fake, **settings)).client(), ResponseSpool(folder, wf.id))
    mode = settings.get("teacher_mode", "interactive")
    return build_corpus(wf, paths, ClaudeTeacher(answers, MODEL, mode), CONFIG), answers


def test_the_claude_teacher_keeps_the_forms_and_caches_the_procedure(fake_claude, tmp_path, wf, paths, template):
    corpus, answers = claude_corpus(fake_claude, tmp_path, wf, paths)
    total = template.height
    # the stand-in words every turn as the plan's example, so the assembled conversations are the
    # template teacher's own: nodes, slots, splits and turn order came through the plan intact
    assert corpus["messages"].to_list() == template["messages"].to_list()
    assert corpus.select("conversation_id", "split", "nodes", "edges", "offscript").equals(
        template.select("conversation_id", "split", "nodes", "edges", "offscript"))
    assert set(corpus["teacher"]) == {f"claude:{MODEL}"} and corpus["teacher_error"].null_count() == total
    # one request per conversation; the procedure block was cached once and read after
    assert fake_claude.count("teacher") == answers.received["teacher"] == total
    assert fake_claude.cached == {INSTRUCTIONS + PROCEDURE_HEADER + render_procedure(wf)}
    kept = [json.loads(line) for line in (tmp_path / f"{wf.id}.responses.jsonl").read_text().splitlines()]
    assert len(kept) == total and sum(k["cache_write_tokens"] > 0 for k in kept) == 1
    assert sum(k["cache_read_tokens"] > 0 for k in kept) == total - 1
    # the measured tokens and dollars are the corpus's
    assert int(corpus["teacher_tokens_out"].sum()) == sum(k["output_tokens"] for k in kept)
    assert int(corpus["teacher_tokens_in"].sum()) == sum(k["input_tokens"] + k["cache_write_tokens"] + k["cache_read_tokens"] for k in kept)
    p = price_of(MODEL)
    usd = sum((k["input_tokens"] * p.input_per_m + k["output_tokens"] * p.output_per_m + k["cache_write_tokens"] * p.cache_write_per_m
               + k["cache_read_tokens"] * p.cache_read_per_m) / 1e6 for k in kept)
    assert float(corpus["teacher_usd"].sum()) == pytest.approx(usd) and usd > 0


def test_a_fault_mid_corpus_loses_nothing_and_the_rerun_requests_only_the_missing(fake_claude, tmp_path, wf, paths, template):
    total = template.height
    fake_claude.outage("teacher", after=9)  # the API goes down after 9 conversations (in the training split)
    with pytest.raises(ClaudeIncomplete, match=rf"the 3 answered are kept, a rerun requests only the {total - 6 - 3} missing"):
        claude_corpus(fake_claude, tmp_path, wf, paths, concurrency=2, max_retries=1)
    first_requests = fake_claude.count("teacher")
    failed_attempts = fake_claude.count("teacher", "500")
    assert fake_claude.answered["teacher"] == 9 and first_requests == 9 + failed_attempts
    assert failed_attempts <= 2 * 2  # at most the two requests in flight, each tried twice: nothing more was sent
    assert len(ResponseSpool(tmp_path, wf.id).replies()) == 9  # every answer that arrived is on disk

    fake_claude.outages.clear()
    corpus, answers = claude_corpus(fake_claude, tmp_path, wf, paths, concurrency=2, max_retries=1)
    rerun_requests = fake_claude.count("teacher") - first_requests
    print(f"\nfault mid-corpus: {total} conversations; first run: 9 answered, {failed_attempts} failed attempts "
          f"({first_requests} requests); rerun: {rerun_requests} requests, {answers.reused['teacher']} answers kept from before")
    assert rerun_requests == answers.received["teacher"] == total - 9
    assert answers.reused["teacher"] == 9
    assert corpus["messages"].to_list() == template["messages"].to_list()  # nothing lost, nothing twice


def test_batches_resume_after_a_stop_and_resubmit_only_the_failed(fake_claude, tmp_path, wf, paths, template):
    fake_claude.poll_outage = True  # the first batch is submitted, then polling fails: the run stops
    with pytest.raises(ClaudeError, match="polling batch msgbatch_0001 failed after 1 retries: InternalServerError 500"):
        claude_corpus(fake_claude, tmp_path, wf, paths, teacher_mode="batch", max_retries=1)
    spool = ResponseSpool(tmp_path, wf.id)
    [(batch_id, keys)] = spool.open_batches("teacher")
    assert batch_id == "msgbatch_0001" and len(keys) == 6  # the holdouts, remembered before polling

    holdouts = template.filter(pl.col("split") != "train")["conversation_id"].to_list()
    train = template.filter(pl.col("split") == "train")["conversation_id"].to_list()
    fake_claude.poll_outage = False
    fake_claude.batch_faults = {train[1]: "errored", train[3]: "expired"}
    corpus, answers = claude_corpus(fake_claude, tmp_path, wf, paths, teacher_mode="batch", max_retries=1)
    # the open batch was read, not submitted again; the errored and expired requests went out once more
    assert fake_claude.batch_requests("teacher") == [holdouts, train, [train[1], train[3]]]
    assert fake_claude.count(path="/v1/messages") == 0  # everything through the Batches API
    assert spool.open_batches("teacher") == []
    assert corpus["messages"].to_list() == template["messages"].to_list()
    replies = spool.replies().values()
    assert len(replies) == template.height and all(r.batch for r in replies)
    assert float(corpus["teacher_usd"].sum()) == pytest.approx(sum(r.usage.usd(MODEL, batch=True) for r in replies))


def test_malformed_teacher_output_is_rejected_by_the_gate_not_trained_on(fake_claude, tmp_path, wf, paths, template):
    broken = template.filter(pl.col("split") == "train")["conversation_id"][2]
    fake_claude.malformed_labels = {broken}
    fake_claude.misspelled_labels = {"holdout-00001"}
    corpus, _ = claude_corpus(fake_claude, tmp_path, wf, paths)
    bad = corpus.filter(pl.col("teacher_error").is_not_null())
    assert bad["conversation_id"].to_list() == [broken]
    assert bad["teacher_error"][0].startswith("teacher output malformed: not JSON")
    accepted, rejected = screen_corpus(corpus, wf)
    assert dict(zip(rejected["conversation_id"], rejected["reason"])) == {
        "holdout-00001": "1 bad form(s) (unparseable, unknown node, empty say, or a value not copied verbatim)",
        broken: bad["teacher_error"][0],
    }
    assert not {broken, "holdout-00001"} & set(accepted["conversation_id"])
    assert accepted.height == template.height - 2  # (the gate's share expectation: test_quality)
