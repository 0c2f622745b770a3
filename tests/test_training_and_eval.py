"""A real (tiny, few-step) training run and a real evaluation of it, through the deployed runtime."""

import json
from pathlib import Path

import pytest

from subterra.evaluation import EvalConfig, evaluate
from subterra.routes import local_routes
from subterra.lexicon import LEXICON_FILE, build_lexicon, load_lexicon, whole_runs
from subterra.tokenizer import workflow_atoms
from subterra.training import RESULT_FILE, TrainConfig, TrainResult, measure_lengths, train

from conftest import TINY


def test_training_writes_a_standard_model_folder(trained):
    config, result, logs = trained
    folder = Path(result.model_dir)
    assert (folder / "model.safetensors").exists()
    assert (folder / "tokenizer.json").exists()
    assert "generation" in json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template", "") or (
        folder / "chat_template.jinja"
    ).exists()
    assert result.steps == 6 and result.params > 10_000
    assert [entry["step"] for entry in logs] == [2, 4, 6]  # progress while it trains
    assert result.loss_curve[-1][1] < result.loss_curve[0][1]  # it learns
    assert TrainResult.from_json(folder / RESULT_FILE).steps == 6
    assert not Path(str(folder) + ".checkpoints").exists()


def test_dropping_the_mask_of_a_right_padded_batch_changes_no_real_tokens_output(trained):
    """``causal_only``: under causal attention a right-padded row's real tokens never see a pad, so
    the batch trains without its padding mask (PyTorch's faster causal kernel) and every real
    token's logits are the ones the mask gives; a left-padded batch keeps its mask."""
    import torch
    from transformers import AutoModelForCausalLM

    from subterra.training import causal_only

    model = AutoModelForCausalLM.from_pretrained(trained[1].model_dir).eval()
    ids = torch.randint(5, 300, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    causal = causal_only(batch)
    assert "attention_mask" not in causal and causal["position_ids"].tolist() == [list(range(12))] * 3
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=mask).logits
        unmasked = model(input_ids=ids, position_ids=causal["position_ids"]).logits
    real = mask.bool()
    assert torch.allclose(masked[real], unmasked[real], atol=1e-5)
    assert not torch.allclose(masked[~real], unmasked[~real], atol=1e-5)  # only the pads' own outputs differ
    left = torch.ones(3, 12, dtype=torch.long)
    left[1, :4] = 0
    assert causal_only({"input_ids": ids, "attention_mask": left}) == {"input_ids": ids, "attention_mask": left}


def test_the_full_logits_loss_and_trls_tiled_head_train_alike(tmp_path, mini_workflow, corpus):
    """On a CPU the student trains with transformers' loss over the full logits (faster there); on
    a GPU with TRL's tiled head (no logits held). Same data, same seed: the same loss."""
    corpus.write_parquet(tmp_path / "train.parquet")
    losses = {}
    for full in (True, False):
        config = TrainConfig(workflow=mini_workflow.id, train_data=str(tmp_path / "train.parquet"),
                             output_dir=str(tmp_path / f"model-{full}"), workflow_atoms=workflow_atoms(mini_workflow),
                             max_steps=2, logging_steps=1, save_steps=10, full_logits_loss=full, **TINY)
        losses[full] = [loss for _, loss in train(config).loss_curve]
    assert len(losses[True]) == 2 and losses[True] == pytest.approx(losses[False], rel=1e-3), losses


def test_node_ids_and_slot_names_are_single_tokens(trained, mini_workflow):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained[1].model_dir)
    for atom in workflow_atoms(mini_workflow):
        assert len(tokenizer(atom, add_special_tokens=False)["input_ids"]) == 1, atom


def test_measure_lengths_counts_tokens(mini_workflow, corpus):
    lengths = measure_lengths(corpus, mini_workflow, TrainConfig(**TINY))
    assert len(lengths) == corpus.height and min(lengths) > 20


def test_lexicon_holds_words_said_around_values_never_inside_them():
    form = '{{"node": "greet", "slots": {{"destination": "{v}"}}, "say": "Ok."}}'
    conversations = [
        [{"role": "user", "content": f"I want to go to {v}, please."}, {"role": "assistant", "content": form.format(v=v)}]
        for v in ("Lisbon", "New York", "Cape Town", "Oslo")
    ]
    lexicon = build_lexicon(conversations)
    assert {"want", "to", "go", "please"} <= set(lexicon)
    assert not {"lisbon", "new", "york", "cape", "town"} & set(lexicon)  # value words never, however often
    assert "i" not in build_lexicon(conversations[:2])  # fewer than three times is not enough


def test_the_trained_model_carries_its_lexicon(trained):
    folder = Path(trained[1].model_dir)
    assert (folder / LEXICON_FILE).exists() and "please" in load_lexicon(folder)
    assert whole_runs(folder)  # a student from config reads a value as a whole run


def test_eval_of_the_trained_model(trained, mini_workflow, corpus):
    routes = local_routes(["compiled_prefill"], None, trained[1].model_dir)
    result = evaluate(routes, mini_workflow, corpus, EvalConfig(scenarios=4, batch_size=8, max_say_tokens=12))
    scores = result.scores
    assert set(scores["set"]) == {"validation", "holdout", "test_unseen"}
    assert scores["scenarios"].to_list() == [4, 4, 4]
    assert set(scores["route"]) == {"compiled_prefill"}
    for column in ("strict_pass", "partial_credit", "form_validity", "failure_rate"):
        assert all(0.0 <= v <= 1.0 for v in scores[column])
    for column in ("strict_pass", "failure_rate"):  # every rate with its 95% Wilson interval around it
        for low, rate, high in zip(scores[f"{column}_low"], scores[column], scores[f"{column}_high"]):
            assert 0.0 <= low <= rate <= high <= 1.0 and high - low > 0.2  # n = 4: a wide interval
    assert result.scenarios.height == 12
    # the constraint: every node the model named is a real node, every value a span of the user's message
    for transcript in result.scenarios["transcript"]:
        for turn in json.loads(transcript):
            assert turn["node"] in mini_workflow.nodes
            assert set(turn["slots"]) <= set(mini_workflow.slots)
    assert (result.scenarios["tokens_in"] > result.scenarios["tokens_out"]).all()


def test_an_eval_with_drafted_says_plays_the_very_same_conversations(trained, mini_workflow, corpus):
    routes = local_routes(["compiled_prefill"], None, trained[1].model_dir)
    plain, drafted = (evaluate(routes, mini_workflow, corpus, EvalConfig(scenarios=4, batch_size=8, max_say_tokens=12,
                                                                         draft_tokens=k)) for k in (0, 48))
    same = [c for c in plain.scenarios.columns if "latenc" not in c]
    assert plain.scenarios.select(same).equals(drafted.scenarios.select(same))


