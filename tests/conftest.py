"""Shared fixtures: a temporary data folder holding the mini workflow, its DuckDB store, and the
Dagster resources pointed at both."""

import json
import shutil
from pathlib import Path

import pytest

from subterra.corpus import CorpusConfig, build_corpus
from subterra.paths import select_paths
from subterra.settings import Settings
from subterra.store import Store
from subterra.teacher import TemplateTeacher
from subterra.tokenizer import workflow_atoms
from subterra.training import TrainConfig, train
from subterra.workflow import load_workflow

FIXTURES = Path(__file__).parent / "fixtures"
MINI = FIXTURES / "mini_booking.yaml"
TINY = dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, batch_size=4, learning_rate=2e-3)


@pytest.fixture
def settings(tmp_path) -> Settings:
    """A data folder with ``workflows/mini_booking.yaml`` in it, and its natural sets."""
    settings = Settings(tmp_path / "data")
    settings.workflows_dir.mkdir(parents=True)
    shutil.copyfile(MINI, settings.workflow_file("mini_booking"))
    shutil.copytree(FIXTURES / "natural", settings.natural_dir)
    return settings


@pytest.fixture
def store(settings) -> Store:
    return Store(settings.db_path)


@pytest.fixture
def resources(settings) -> dict:
    """The resources of ``definitions.py``, pointed at the temporary data folder."""
    from subterra_dagster.definitions import build_definitions

    return dict(build_definitions(str(settings.data_dir)).resources)


@pytest.fixture
def instance():
    """An in-memory Dagster instance with the mini workflow's partition added."""
    import dagster as dg

    from subterra_dagster.assets import workflows_partitions

    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(workflows_partitions.name, ["mini_booking"])
        yield instance


# A real corpus of the mini workflow and a tiny model trained on it for a few steps (shared by the
# test modules that need a trained student).
@pytest.fixture(scope="session")
def mini_workflow():
    return load_workflow(MINI)


@pytest.fixture(scope="session")
def corpus(mini_workflow):
    paths = select_paths(mini_workflow, cap=100, seed=0).paths
    # a small uniform corpus, its off-script turns as often as the held-out sets' (the fixtures' models stay small)
    return build_corpus(mini_workflow, paths, TemplateTeacher(), CorpusConfig(
        conversations_per_path=3, holdout_scenarios=6, sizing="uniform", train_offscript_rate=None, train_correction_share=None))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mini_workflow, corpus):
    folder = tmp_path_factory.mktemp("train")
    corpus.write_parquet(folder / "train.parquet")
    config = TrainConfig(
        workflow=mini_workflow.id,
        train_data=str(folder / "train.parquet"),
        output_dir=str(folder / "model"),
        workflow_atoms=workflow_atoms(mini_workflow),
        max_steps=6,
        logging_steps=2,
        save_steps=3,
        **TINY,
    )
    logs = []
    result = train(config, on_log=logs.append)
    return config, result, logs


def sharp_model_and_prompts(trained, corpus):
    """The trained tiny model with sharp random weights (every position of the context changes the
    choice), the ids a free choice may not take, and three conversations' opening prompts."""
    import torch

    from subterra.student import load_compiled

    tokenizer, model = load_compiled(trained[1].model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    prompts = [tokenizer.apply_chat_template(json.loads(m)[:2], tokenize=True, add_generation_prompt=True)
               for m in corpus["messages"][:3]]
    return tokenizer, model, list(tokenizer.all_special_ids), [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]


# A tiny model trained long enough to follow the mini workflow to its ends (about a minute): what
# the server's tests talk to.
FLUENT = dict(TINY, hidden_size=64, intermediate_size=128, num_heads=4, batch_size=8, learning_rate=3e-3)


@pytest.fixture(scope="session")
def fluent(tmp_path_factory, mini_workflow, corpus):
    folder = tmp_path_factory.mktemp("fluent")
    corpus.write_parquet(folder / "train.parquet")
    config = TrainConfig(workflow=mini_workflow.id, train_data=str(folder / "train.parquet"), output_dir=str(folder / "model"),
                         workflow_atoms=workflow_atoms(mini_workflow), max_steps=200, logging_steps=100, save_steps=1000, **FLUENT)
    return train(config)


@pytest.fixture
def fake_claude(monkeypatch):
    """The local stand-in for the Claude API (``claude_fake.FakeClaude``), with its key in
    ``ANTHROPIC_API_KEY`` for the test's duration."""
    from claude_fake import KEY, FakeClaude

    fake = FakeClaude()
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("SUBTERRA_CLAUDE", raising=False)
    yield fake
    fake.close()


def claude_settings(fake, **overrides):
    """Every part on Claude, against ``fake``: quick timeouts, retries and polls for tests."""
    from subterra.claude_client import PARTS, ClaudeSettings

    values = dict(parts=frozenset(PARTS), base_url=fake.url, max_retries=3, timeout_s=0.5, poll_s=0.01, concurrency=4,
                  teacher_mode="interactive")
    values.update(overrides)
    return ClaudeSettings(**values)
