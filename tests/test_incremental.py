"""Incremental recompiles: path hashes, the reused corpus, the training mix, continued training."""

import json
from pathlib import Path

import polars as pl
import pytest

from subterra.corpus import CorpusConfig, build_corpus
from subterra.incremental import MixConfig, Reuse, conversation_hashes, generation_context, path_hashes, training_mix
from subterra.paths import path_nodes, select_paths
from subterra.teacher import TemplateTeacher
from subterra.workflow import Workflow, load_workflow

FIXTURES = Path(__file__).parent / "fixtures"
CONFIG = CorpusConfig(conversations_per_path=3, holdout_scenarios=10, offscript_rate=0.3, sizing="uniform")


@pytest.fixture(scope="module")
def mini():
    return load_workflow(FIXTURES / "mini_booking.yaml")


def edited(wf: Workflow, node: str, say: str) -> Workflow:
    """``wf`` with one node's say lines replaced: a one-node text edit."""
    definition = wf.to_dict()
    definition["nodes"][node]["say"] = [say]
    return Workflow.from_dict(definition)


def without_branch(wf: Workflow, node: str, index: int) -> Workflow:
    definition = wf.to_dict()
    del definition["nodes"][node]["branches"][index]
    return Workflow.from_dict(definition)


def corpus_of(wf, reuse=None, config=CONFIG):
    paths = select_paths(wf, cap=1000).paths
    return build_corpus(wf, paths, TemplateTeacher(), config, reuse=reuse)


def tiny_training(wf, data: Path, **settings) -> dict:
    """TrainConfig settings of a student small enough to train in seconds on ``data``."""
    return dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, batch_size=4,
                workflow=wf.id, train_data=str(data), save_steps=100, **settings)


def test_a_text_edit_changes_the_hash_of_exactly_the_paths_through_the_node(mini):
    paths = select_paths(mini, cap=1000).paths
    after = edited(mini, "confirm", "Shall I book it?")
    context = generation_context(mini, TemplateTeacher(), CONFIG)
    before_hashes = path_hashes(mini, paths, context)
    after_hashes = path_hashes(after, paths, generation_context(after, TemplateTeacher(), CONFIG))
    through = ["confirm" in path_nodes(mini, p) for p in paths]
    assert any(through) and not all(through)
    assert [a != b for a, b in zip(before_hashes, after_hashes)] == through
    # anything every conversation depends on changes every hash: slots, settings, the teacher
    slot_edit = mini.to_dict()
    slot_edit["slots"]["destination"]["values"].append("Dakar")
    other = Workflow.from_dict(slot_edit)
    assert set(path_hashes(other, paths, generation_context(other, TemplateTeacher(), CONFIG))).isdisjoint(before_hashes)
    for changed in (generation_context(mini, TemplateTeacher(seed=1), CONFIG),
                    generation_context(mini, TemplateTeacher(), CorpusConfig(**{**CONFIG.__dict__, "offscript_rate": 0.1}))):
        assert set(path_hashes(mini, paths, changed)).isdisjoint(before_hashes)


def test_incremental_corpus_keeps_unchanged_paths_and_regenerates_changed_ones(mini):
    before = corpus_of(mini)
    after_wf = edited(mini, "confirm", "Shall I book it?")
    reuse = Reuse(before)
    incremental = corpus_of(after_wf, reuse)
    full = corpus_of(after_wf)
    # the same corpus a full recompile writes, but only the changed part was written
    assert incremental.equals(full)
    changed = incremental.filter(pl.col("nodes").list.contains("confirm"))
    kept = incremental.filter(~pl.col("nodes").list.contains("confirm"))
    assert changed.height and kept.height
    assert (reuse.generated, reuse.reused) == (changed.height, kept.height)
    old = {row["conversation_id"]: row for row in before.iter_rows(named=True)}
    for row in kept.iter_rows(named=True):  # unchanged paths: the previous rows, byte for byte
        assert row == old[row["conversation_id"]]
    for row in changed.filter(pl.col("split") == "train").iter_rows(named=True):
        assert "Shall I book it?" in row["messages"] and row["messages"] != old[row["conversation_id"]]["messages"]
        assert row["path_hash"] != old[row["conversation_id"]]["path_hash"]


def test_editing_one_of_a_nodes_says_changes_only_the_conversations_that_speak_it(mini):
    """confirm has two say lines; editing one changes the hash of every path through confirm, yet
    the conversations that speak the other line are the ones the last model learnt, token for
    token: only those that speak the edited line are new to it (what a continued run weights up)."""
    before = corpus_of(mini)
    definition = mini.to_dict()
    says = definition["nodes"]["confirm"]["say"]
    assert len(says) == 2 and says[1] == "Ready to confirm?"
    definition["nodes"]["confirm"]["say"] = [says[0], "Is everything right?"]
    after = corpus_of(Workflow.from_dict(definition))
    through = after["nodes"].list.contains("confirm")
    speaks = after["messages"].str.contains("Is everything right?", literal=True)
    assert speaks.sum() and (through & ~speaks).sum()  # both kinds of conversation through confirm
    learnt = set(conversation_hashes(before["messages"]))
    new = [h not in learnt for h in conversation_hashes(after["messages"])]
    assert new == speaks.to_list()
    mix = training_mix(conversation_hashes(after["messages"]), learnt, MixConfig(max_fraction=1.0))
    assert mix.changed == speaks.sum() and mix.worth_continuing


def test_reused_conversations_come_from_the_previous_corpus(mini):
    """A kept conversation is the previous corpus's row, not the teacher's work: a marker put into
    the previous rows comes back; put into a changed path's row it does not."""
    before = corpus_of(mini)
    through = before["nodes"].list.contains("confirm")
    marked = before.with_columns(pl.col("messages").str.replace("\\]$", ', {"role": "user", "content": "MARK"}]'))
    result = corpus_of(edited(mini, "confirm", "Shall I book it?"), Reuse(marked))
    has_mark = result["messages"].str.contains("MARK")
    assert (has_mark == ~through).all()


def test_a_removed_branch_keeps_the_other_paths_conversations(mini):
    """A structural edit: the paths through the edited node change or vanish, the other paths keep
    their training conversations although the path list (and each path's place in it) moved."""
    before = corpus_of(mini)
    after_wf = without_branch(mini, "confirm", 1)  # confirm no longer offers to cancel
    reuse = Reuse(before)
    after = corpus_of(after_wf, reuse)
    assert len(select_paths(after_wf, cap=1000).paths) < len(select_paths(mini, cap=1000).paths)
    train_before, train_after = (c.filter(pl.col("split") == "train") for c in (before, after))
    off_confirm = train_before.filter(~pl.col("nodes").list.contains("confirm"))
    assert off_confirm.height
    assert off_confirm.sort("conversation_id").equals(
        train_after.filter(~pl.col("nodes").list.contains("confirm")).sort("conversation_id"))
    assert reuse.reused >= off_confirm.height
    assert after.equals(corpus_of(after_wf))


def test_a_full_recompile_reuses_nothing_and_an_old_corpus_cannot_be_reused(mini):
    before = corpus_of(mini)
    assert Reuse(before.drop("path_hash")).take(before["path_hash"][0], before["conversation_id"][0]) is None
    reuse = Reuse(before.drop("path_hash"))
    corpus_of(mini, reuse)
    assert reuse.reused == 0 and reuse.generated == before.height
    same = Reuse(before)
    assert corpus_of(mini, same).equals(before) and same.generated == 0


def test_training_mix_weights_the_changed_rows_and_replays_the_rest():
    hashes = [f"old{i % 20}" for i in range(180)] + [f"new{i}" for i in range(20)]
    known = {f"old{i}" for i in range(20)}
    mix = training_mix(hashes, known, MixConfig(changed_passes=2, replay_ratio=1.0, min_fraction=0.1, max_fraction=0.5))
    assert (mix.changed, mix.unchanged) == (20, 180)
    assert all(w == 2 for w in mix.weights[180:])  # two passes over every changed conversation
    replayed = mix.weights[:180]
    assert set(replayed) <= {0, 1} and sum(replayed) == 40  # one replayed per changed one seen
    assert mix.size == 80
    # more than the maximum share (80 rows): changed passes (180) and replay (180) shrink together in
    # their ratio, one replayed per changed one seen: 40 of the 60 changed rows once, 40 replayed
    some = training_mix([f"new{i}" for i in range(60)] + [f"old{i}" for i in range(140)], {f"old{i}" for i in range(140)},
                        MixConfig(changed_passes=3, replay_ratio=1.0, max_fraction=0.4))
    assert some.size == 80 and set(some.weights[:60]) == {0, 1} and sum(some.weights[:60]) == 40
    assert set(some.weights[60:]) == {0, 1} and sum(some.weights[60:]) == 40
    assert some.worth_continuing
    # the default ratio, two replayed rows per changed one seen, under trained_weights' cap (35%), as
    # for bench-e2e's edit (145 of 688 conversations new to the model)
    edit = training_mix([f"new{i}" for i in range(145)] + [f"old{i}" for i in range(543)], {f"old{i}" for i in range(543)},
                        MixConfig(max_fraction=0.35))
    assert (edit.size, sum(edit.weights[:145]), sum(edit.weights[145:])) == (240, 80, 160)
    # one pass over what changed is more than the maximum share: a full retrain is as cheap
    many_rows = [f"new{i}" for i in range(150)] + [f"old{i}" for i in range(50)]
    many = training_mix(many_rows, {f"old{i}" for i in range(50)},
                        MixConfig(changed_passes=3, replay_ratio=1.0, max_fraction=0.4))
    assert not many.worth_continuing
    assert training_mix(many_rows, {f"old{i}" for i in range(50)}, MixConfig(max_fraction=0.75)).worth_continuing
    assert not training_mix(["new0", "new1"], set(), MixConfig(max_fraction=1.0)).worth_continuing  # nothing learnt before
    # little changed: replay fills up to the minimum share
    few = training_mix(["new"] + [f"old{i}" for i in range(199)], {f"old{i}" for i in range(199)},
                       MixConfig(changed_passes=3, replay_ratio=1.0, min_fraction=0.1))
    assert few.weights[0] == 3 and few.size == 20
    # the same inputs give the same mix
    assert training_mix(hashes, known, seed=3).weights == training_mix(hashes, known, seed=3).weights


def test_continued_training_starts_from_the_previous_weights(tmp_path, mini):
    """A continued run loads the previous model (weights and tokenizer): at learning rate 0 its
    weights come out equal to the previous ones, and a node id the previous tokenizer lacked
    becomes one new token."""
    import torch
    from safetensors.torch import load_file

    from subterra.tokenizer import workflow_atoms
    from subterra.training import TrainConfig, TrainResult, train

    corpus = corpus_of(mini)
    corpus.write_parquet(tmp_path / "train.parquet")
    tiny = tiny_training(mini, tmp_path / "train.parquet", logging_steps=1)
    first = train(TrainConfig(output_dir=str(tmp_path / "first"), workflow_atoms=workflow_atoms(mini), max_steps=3, **tiny))
    first_train = corpus["split"].to_list().index("train")
    weighted = corpus.with_columns(pl.Series("weight", [2 if i == first_train else 0 for i in range(corpus.height)]))
    weighted.write_parquet(tmp_path / "train.parquet")
    atoms = workflow_atoms(mini) + ["brand_new_step"]
    frozen = train(TrainConfig(output_dir=str(tmp_path / "frozen"), workflow_atoms=atoms, max_steps=2,
                               init_from=first.model_dir, learning_rate=0.0, **tiny))
    assert frozen.continued_from == first.model_dir and frozen.train_conversations == 2  # the mix, by weight
    before, after = load_file(Path(first.model_dir) / "model.safetensors"), load_file(Path(frozen.model_dir) / "model.safetensors")
    for name, tensor in before.items():
        if "embed" in name or "lm_head" in name:
            assert torch.equal(after[name][: tensor.shape[0]], tensor) and after[name].shape[0] == tensor.shape[0] + 1
        else:
            assert torch.equal(after[name], tensor), name
    from transformers import AutoTokenizer

    old_tok, new_tok = AutoTokenizer.from_pretrained(first.model_dir), AutoTokenizer.from_pretrained(frozen.model_dir)
    sample = json.loads(corpus["messages"][0])[1]["content"]
    assert old_tok(sample)["input_ids"] == new_tok(sample)["input_ids"]  # the same tokenizer, plus one token
    assert len(new_tok("brand_new_step", add_special_tokens=False)["input_ids"]) == 1
    assert TrainResult.from_json(Path(frozen.model_dir) / "training_result.json").continued_from == first.model_dir


def test_continuing_a_student_whose_tokenizer_spells_node_ids_in_pieces_keeps_its_tokenizer(tmp_path, mini):
    """A pretrained student keeps its own tokenizer at compile time (node ids in its own pieces);
    continuing it (a repair round, an incremental recompile) must not turn node ids into new,
    untrained tokens: the same tokens and the same embedding rows come back."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from subterra.student import continue_student
    from subterra.tokenizer import train_tokenizer, workflow_atoms

    corpus = corpus_of(mini)
    texts = [m["content"] for c in corpus["messages"] for m in json.loads(c)]
    tokenizer = train_tokenizer(texts, 400)  # no atoms: node ids are spelt with BPE pieces
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    tokenizer.save_pretrained(tmp_path / "pretrained-like")
    model.save_pretrained(tmp_path / "pretrained-like")
    atoms = workflow_atoms(mini)
    assert any(len(tokenizer(a, add_special_tokens=False)["input_ids"]) > 1 for a in atoms)
    again, continued = continue_student(str(tmp_path / "pretrained-like"), atoms)
    assert len(again) == len(tokenizer)
    assert continued.get_input_embeddings().num_embeddings == model.get_input_embeddings().num_embeddings
    for atom in atoms:
        assert again(atom, add_special_tokens=False)["input_ids"] == tokenizer(atom, add_special_tokens=False)["input_ids"]


def test_a_wide_pool_that_gains_a_line_changes_every_wide_hash_and_no_core_one(mini, monkeypatch):
    """The wide pools grow (a teacher's variety); a recompile must not reuse conversations drawn
    from the old pools. The core pools never change, and their hashes are the ones of format 4."""
    from dataclasses import replace

    from subterra import phrasing as ph

    paths = select_paths(mini, cap=1000).paths
    core, wide = CONFIG, CorpusConfig(**{**CONFIG.__dict__, "phrasings": "wide"})
    before = {c.phrasings: path_hashes(mini, paths, generation_context(mini, TemplateTeacher(), c)) for c in (core, wide)}
    monkeypatch.setattr(ph, "CORRECTIONS", replace(ph.CORRECTIONS, added=ph.CORRECTIONS.added + ("{new}! Not {old}!",)))
    after = {c.phrasings: path_hashes(mini, paths, generation_context(mini, TemplateTeacher(), c)) for c in (core, wide)}
    assert after["core"] == before["core"]
    assert set(after["wide"]).isdisjoint(before["wide"])



def test_a_slot_placeholder_is_added_on_continuing_only_to_a_tokenizer_that_has_them(tmp_path, mini):
    """Continuing a student adds the tokens it lacks: a new slot's name and its ``{slot}``
    placeholder. A student from before placeholders were tokens of their own (it writes
    ``{`` + name + ``}``) keeps writing them that way: adding them would change every say line
    it learnt; it gets the new slot's name only."""
    from subterra.student import continue_student
    from subterra.tokenizer import placeholder, workflow_atoms
    from subterra.training import TrainConfig, train

    corpus_of(mini).write_parquet(tmp_path / "train.parquet")
    tiny = tiny_training(mini, tmp_path / "train.parquet", max_steps=1)
    atoms = workflow_atoms(mini)
    names_only = [a for a in atoms if not a.startswith("{")]
    grown = atoms + ["pet", placeholder("pet")]
    for name, given, added in (("now", atoms, ["pet", "{pet}"]), ("before", names_only, ["pet"])):
        model_dir = train(TrainConfig(output_dir=str(tmp_path / name), workflow_atoms=given, **tiny)).model_dir
        tok, model = continue_student(model_dir, grown)
        old = continue_student(model_dir)[0]
        assert sorted(set(tok.get_vocab()) - set(old.get_vocab())) == added
        assert model.get_input_embeddings().num_embeddings == len(tok)
        slot = next(iter(mini.slots))
        say = "Flying to %s, right?" % placeholder(slot)
        assert tok(say)["input_ids"] == old(say)["input_ids"]  # what it learnt reads the same
        assert (len(old(placeholder(slot), add_special_tokens=False)["input_ids"]) == 1) == (name == "now")


def test_a_continued_run_resumes_the_optimizer_state_the_training_it_continues_ended_with(tmp_path, mini):
    """A model folder keeps its optimizer's state; a run continuing it starts from that state (every
    parameter's Adam step count goes on from the first run's), also for an embedding that grew by a
    token (one more row of moments); with ``optimizer_state`` off neither is done."""
    import torch
    from transformers import AutoModelForCausalLM

    from subterra.tokenizer import workflow_atoms
    from subterra.training import OPTIMIZER_FILE, TrainConfig, train

    corpus_of(mini).write_parquet(tmp_path / "train.parquet")
    tiny = tiny_training(mini, tmp_path / "train.parquet", logging_steps=1)
    first = train(TrainConfig(output_dir=str(tmp_path / "first"), workflow_atoms=workflow_atoms(mini), max_steps=3, **tiny))
    saved = torch.load(Path(first.model_dir) / OPTIMIZER_FILE, weights_only=True)["state"]
    assert len(saved) == len(list(AutoModelForCausalLM.from_pretrained(first.model_dir).parameters()))
    assert {float(s["step"]) for s in saved.values()} == {3.0}
    atoms = workflow_atoms(mini) + ["brand_new_step"]  # the embedding gets one more row
    continued = train(TrainConfig(output_dir=str(tmp_path / "continued"), workflow_atoms=atoms, max_steps=2,
                                  init_from=first.model_dir, **tiny))
    assert continued.optimizer_resumed == len(saved)
    after = torch.load(Path(continued.model_dir) / OPTIMIZER_FILE, weights_only=True)["state"]
    assert {float(s["step"]) for s in after.values()} == {5.0}
    grown = [i for i, s in after.items() if s["exp_avg_sq"].shape != saved[i]["exp_avg_sq"].shape]
    assert len(grown) == 1 and after[grown[0]]["exp_avg_sq"].shape[0] == saved[grown[0]]["exp_avg_sq"].shape[0] + 1

    fresh = train(TrainConfig(output_dir=str(tmp_path / "fresh"), workflow_atoms=atoms, max_steps=2,
                              init_from=first.model_dir, optimizer_state=False, **tiny))
    assert fresh.optimizer_resumed == 0 and not (Path(fresh.model_dir) / OPTIMIZER_FILE).exists()
    stateless = train(TrainConfig(output_dir=str(tmp_path / "stateless"), workflow_atoms=atoms, max_steps=2,
                                  init_from=fresh.model_dir, **tiny))  # continuing a folder without a state: a fresh Adam
    assert stateless.optimizer_resumed == 0
    steps = torch.load(Path(stateless.model_dir) / OPTIMIZER_FILE, weights_only=True)["state"].values()
    assert {float(s["step"]) for s in steps} == {2.0}
