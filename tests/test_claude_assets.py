"""The Claude switch in the Dagster pipeline: offline without the key (nothing calls out, and the
metadata says why), and with it the teacher's corpus through the assets, its malformed output
rejected by the gate, and the key in no log, metadata, stored row or file."""

import logging

import polars as pl
import pytest

from subterra_dagster.assets import COMPILE_ASSETS
from claude_fake import KEY
from subterra_dagster.resources import ClaudeResource
from test_assets import KEY as WORKFLOW, failure_text, materialize, metadata

CORPUS_STAGES = COMPILE_ASSETS[:3]  # graph, paths, corpus


def claude_resource(fake, **overrides) -> ClaudeResource:
    values = dict(parts="all", base_url=fake.url, max_retries=1, timeout_seconds=2.0, poll_seconds=0.01, concurrency=4)
    values.update(overrides)
    return ClaudeResource(**values)


def test_without_the_key_nothing_calls_out_and_the_metadata_says_why(fake_claude, monkeypatch, store, resources, instance):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("SUBTERRA_CLAUDE", "all")  # asked for, but there is no key
    resources["claude"] = claude_resource(fake_claude, parts="")
    result = materialize(CORPUS_STAGES, resources, instance)
    assert result.success
    assert fake_claude.requests == []
    assert set(store.read("synthetic_corpus", WORKFLOW)["teacher"]) == {"template"}
    corpus_meta = metadata(result, COMPILE_ASSETS[2])
    assert corpus_meta["teacher"] == "template"
    assert corpus_meta["teacher_claude"] == "offline: template teacher (ANTHROPIC_API_KEY is not set)"
    assert corpus_meta["teacher_usd"] == 0.0


def test_the_claude_teacher_through_the_assets_never_shows_the_key(fake_claude, settings, store, resources, instance, caplog):
    caplog.set_level(logging.DEBUG)
    resources["claude"] = claude_resource(fake_claude, parts="teacher", teacher_mode="batch")
    fake_claude.misspelled_labels = {"holdout-00002"}  # one conversation the gate must reject
    fake_claude.poll_outage = True  # the first batch goes in, then polling fails: the run stops
    failed = materialize(CORPUS_STAGES, resources, instance)
    assert not failed.success
    assert "polling batch msgbatch_0001 failed after 1 retries: InternalServerError 500" in failure_text(failed)
    fake_claude.poll_outage = False

    result = materialize(COMPILE_ASSETS[:4], resources, instance)
    corpus = store.read("synthetic_corpus", WORKFLOW)
    assert set(corpus["teacher"]) == {"claude:claude-sonnet-5-5"} and corpus.height == 20
    meta = metadata(result, COMPILE_ASSETS[2])
    assert meta["teacher"] == "claude:claude-sonnet-5-5" and meta["teacher_claude"] == "claude-sonnet-5-5 (batch)"
    # the rerun read the open batch (the held-out sets) and submitted one more (training): 20 answers, none twice
    assert meta["teacher_answers_requested"] == 20 and meta["teacher_usd"] == pytest.approx(float(corpus["teacher_usd"].sum()))
    assert [len(b) for b in fake_claude.batch_requests("teacher")] == [12, 8]
    # the gate rejected the malformed conversation: not in the dataset, listed with its reason
    rejected = store.read("rejected_conversations", WORKFLOW)
    assert rejected["conversation_id"].to_list() == ["holdout-00002"]
    assert "holdout-00002" not in store.read("validated_dataset", WORKFLOW)["conversation_id"].to_list()
    assert metadata(result, COMPILE_ASSETS[3])["rejected_conversations"] == 1
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "corpus_quality_gate"]
    assert "teacher output rejected for at most 5% of conversations | yes | 1 of 20 rejected" in check.metadata["expectations"].value

    # the key: sent to the API in its header, and nowhere else
    assert fake_claude.count(path=None) > 0 and fake_claude.count(outcome="401", path=None) == 0
    texts = [caplog.text, failure_text(failed)]
    for run in (failed, result):
        for record in instance.all_logs(run.run_id):
            texts.append(record.user_message)
            texts.append(str(record.dagster_event))
    assert not [t for t in texts if KEY in t]
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for table in store.tables():
        assert not any(KEY in str(value) for row in store.query(f"select * from {table}").rows() for value in row), table
