"""The route ladder on the tiny student: every route runs on the same scenarios; the prefilled
form never names an unknown node; the shared system prompt is encoded once and changes nothing."""

import json

import polars as pl
import pytest

from subterra.evaluation import EvalConfig, evaluate
from subterra.procedure import render_procedure
from subterra.routes import ROUTES, SPECS, local_routes
from subterra.runtime import Choice, Lockstep, read_form

SMALL = dict(scenarios=2, batch_size=8, max_say_tokens=6, max_form_tokens=24, extra_turns=1)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory, trained):
    """The tiny student with sharp random weights: a model that knows nothing, so only the
    runtime's constraints can keep its forms in shape."""
    import torch

    from subterra.student import load_compiled

    tokenizer, model = load_compiled(trained[1].model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("random") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_every_route_runs_on_the_same_scenarios(trained, mini_workflow, corpus):
    model = trained[1].model_dir  # the tiny student stands in for the base model too
    routes = local_routes(ROUTES, model, model)
    assert [r.name for r in routes] == list(ROUTES)
    result = evaluate(routes, mini_workflow, corpus, EvalConfig(**SMALL))
    scores = result.scores
    assert sorted(scores["route"].unique()) == sorted(ROUTES)
    assert scores.height == len(ROUTES) * 3 and set(scores["scenarios"]) == {2}  # validation, holdout, test_unseen
    per_route = result.scenarios.group_by("route").agg(pl.col("scenario_id").sort())
    assert len({tuple(ids) for ids in per_route["scenario_id"]}) == 1  # the same scenarios for every route
    tokens_in = {r["route"]: r["tokens_in"] for r in scores.filter(pl.col("set") == "holdout").iter_rows(named=True)}
    # the orchestrated routes read the whole procedure every turn
    assert tokens_in["orchestrated_prefill"] > tokens_in["compiled_prefill"]
    assert tokens_in["orchestrated"] > tokens_in["compiled"]
    for column in ("strict_pass", "partial_credit", "form_validity", "failure_rate"):
        assert all(0.0 <= v <= 1.0 for v in scores[column])
    assert (result.scenarios["tokens_out"] > 0).all()
    assert all(len(lat) == turns for lat, turns in zip(result.scenarios["latencies_ms"], result.scenarios["turns"]))


def test_routes_without_a_base_model_leave_the_orchestrated_ones_out(trained):
    routes = local_routes(ROUTES, None, trained[1].model_dir)
    assert [r.name for r in routes] == ["compiled", "compiled_prefill"]
    assert all(not SPECS[r.name].procedure for r in routes)
    with pytest.raises(ValueError, match="unknown route"):
        local_routes(["frontier_by_pigeon"], None, trained[1].model_dir)


def test_the_constraint_never_emits_an_unknown_node(random_model, mini_workflow, corpus):
    """A model with random weights: on the prefilled form every node it names is a node of the
    workflow and every slot one of its slots; left free, the same model writes no valid form."""
    routes = local_routes(["compiled", "compiled_prefill"], None, random_model)
    result = evaluate(routes, mini_workflow, corpus, EvalConfig(**{**SMALL, "scenarios": 3}))
    prefill = result.scenarios.filter(pl.col("route") == "compiled_prefill")
    named = [turn for t in prefill["transcript"] for turn in json.loads(t)]
    assert named and all(turn["node"] in mini_workflow.nodes for turn in named)
    assert all(set(turn["slots"]) <= set(mini_workflow.slots) for turn in named)
    free = result.scores.filter(pl.col("route") == "compiled")
    assert (free["form_validity"] == 0.0).all()


def test_a_shared_prefix_is_encoded_once_and_changes_nothing(trained, mini_workflow, corpus):
    """Rows that start from a prefix encoded once (copied into every row's cache) choose the same
    tokens as rows that feed the prefix themselves."""
    import torch

    from subterra.runtime import Codec
    from subterra.student import load_compiled

    tokenizer, model = load_compiled(trained[1].model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    codec = Codec(tokenizer, mini_workflow)
    prefix = codec.system(render_procedure(mini_workflow))
    messages = [codec.user(json.loads(m)[1]["content"]) for m in corpus["messages"][:3]]

    def program(ids, out, n=5):
        for t in ids:
            yield ("force", t)
        for _ in range(n):
            out.append((yield Choice(None)))

    driver = Lockstep(model, codec.banned_in_say)
    together = [[] for _ in messages]
    driver.run([program(prefix + m, o) for m, o in zip(messages, together)], max_len=len(prefix) + 64)
    shared = [[] for _ in messages]
    encoded = driver.encode_prefix(prefix)
    driver.run([program(m, o) for m, o in zip(messages, shared)], max_len=len(prefix) + 64, prefix=encoded)
    assert shared == together and all(len(o) == 5 for o in shared)


def test_a_free_text_is_read_leniently_but_is_not_a_valid_form():
    form, valid = read_form('{"node": "greet", "slots": {"destination": "Oslo"}, "say": "Hi"}')
    assert valid and form.node == "greet" and form.slots == {"destination": "Oslo"}
    form, valid = read_form('Sure! {"node": "ask_date", "slots": {"destination": "Oslo"}, "say": "When')
    assert not valid and form.node == "ask_date" and form.slots == {"destination": "Oslo"}
    form, valid = read_form("Hello, how can I help?")
    assert not valid and form.node == "" and form.slots == {}


def test_candidates_scored_over_a_shared_context_equal_a_plain_forward(trained):
    """Scoring candidates that attend to the context where it lies (a procedure prefix and a
    row's own tokens, never copied per candidate) gives the log-probabilities of running each
    context + candidate through the model from scratch."""
    import torch

    from subterra.runtime import candidate_scores
    from subterra.student import load_compiled

    tokenizer, model = load_compiled(trained[1].model_dir)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    ids = tokenizer("I would like to fly to Cape Town on 9 May 2027, please.", add_special_tokens=False)["input_ids"]
    head, tail = ids[:7], ids[7:]
    candidates = {"a": ids[:3], "b": ids[3:8], "c": [ids[0]], "d": ids[5:7] + ids[1:2]}
    with torch.inference_mode():
        first = model(input_ids=torch.tensor([head]), use_cache=True)
        second = model(input_ids=torch.tensor([tail]), use_cache=True, position_ids=torch.arange(len(head), len(ids))[None],
                       past_key_values=first.past_key_values)
    segments = [[(l.keys[:, :, : len(head)], l.values[:, :, : len(head)]) for l in first.past_key_values.layers],
                [(l.keys[:, :, len(head):], l.values[:, :, len(head):]) for l in first.past_key_values.layers]]
    got = candidate_scores(model, segments, len(ids), second.logits[0, -1].float().numpy(), candidates)
    for key, seq in candidates.items():
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids + seq])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        expected = sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(seq))
        assert got[key] == pytest.approx(expected, abs=1e-3), key


def test_rows_that_finish_early_leave_the_batch_without_changing_the_others(trained, corpus):
    """Rows of very different lengths: once most are done the batch shrinks to the rest, and every
    row still chooses what it would alone; a row that runs out of room is reported as cut off."""
    import torch

    from subterra.student import load_compiled

    tokenizer, model = load_compiled(trained[1].model_dir)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    prompts = [tokenizer(json.loads(m)[1]["content"], add_special_tokens=False)["input_ids"] for m in corpus["messages"][:5]]
    lengths = [2, 3, 12, 2, 40]  # the last needs more room than the cache has

    def program(ids, out, k):
        for t in ids:
            yield ("force", t)
        for _ in range(k):
            out.append((yield Choice(None)))

    driver = Lockstep(model, list(tokenizer.all_special_ids))
    together = [[] for _ in prompts]
    max_len = max(map(len, prompts)) + 20
    cut = driver.run([program(p, o, k) for p, o, k in zip(prompts, together, lengths)], max_len=max_len)
    assert cut == [False, False, False, False, True]
    for p, k, got in zip(prompts, lengths, together):
        alone: list[int] = []
        driver.run([program(p, alone, k)], max_len=max_len)
        assert got == alone


def test_templatize_gives_back_the_text_when_filled_and_leaves_literal_braces():
    from subterra.phrasing import fill, placeholders, templatize

    values = {"destination": "Cape Town", "origin": "Cape", "travellers": "2"}
    text = "Flying from Cape to Cape Town, 2 of you {really}? Capetown stays."
    template = templatize(text, values)
    assert template == "Flying from {origin} to {destination}, {travellers} of you {{really}}? Capetown stays."
    assert placeholders(template) == ["origin", "destination", "travellers"]
    assert fill(template, values) == text


def test_the_user_reads_the_say_filled_in_and_a_placeholder_of_nothing_held_is_an_invalid_form(mini_workflow):
    """The runtime fills a say's {slot} placeholders from the values the conversation holds; a
    placeholder naming a value nobody gave stays as written and makes the form invalid."""
    from subterra.forms import Form, render_form, shown_say
    from subterra.routes import Episode, Transcript, conversation_program
    from subterra.runtime import Codec
    from subterra.scenario import Scenario

    assert shown_say("To {destination}, {{ok}}?", {"destination": "Oslo"}) == ("To Oslo, {ok}?", True)
    assert shown_say("To {destination}?", {}) == ("To {destination}?", False)

    class Chars:  # a tokenizer stand-in: one id per character (conversation_program only counts them)
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    forms = iter([Form("greet", {}, "Hi, where to?"), Form("ask_date", {"destination": "Oslo"}, "When to {destination}?"),
                  Form("ask_count", {}, "How many for {date}?")])

    def turn_program(message, counter, held, at=None):
        form = next(forms)
        return form, render_form(form), True
        yield  # a generator, as a route's turn program is

    class Heard:  # the user: records what it read, answers with the scenario's value
        def __init__(self, wf, scenario):
            self.read = []

        def opener(self):
            from subterra.simulator import UserTurn
            return UserTurn("Hello", "opener")

        def reply(self, node, say):
            from subterra.simulator import UserTurn
            self.read.append(say)
            return UserTurn("Oslo." if node == "greet" else "Soon.", "answer") if len(self.read) < 3 else None

    users, made = None, []

    def make(wf, scenario):
        made.append(Heard(wf, scenario))
        return made[-1]

    from subterra.simulator import Users

    codec = Codec.__new__(Codec)
    codec.tok = Chars()
    out = Transcript("s")
    episode = Episode(Scenario("s", "holdout", (), {}), [], 5)
    program = conversation_program(codec, mini_workflow, episode, turn_program, 0, out, lambda: 0.0, Users("t", make))
    for _ in program:
        pass
    # a placeholder the conversation does not hold is never shown: the step's first line that needs none is
    assert made[0].read == ["Hi, where to?", "When to Oslo?", "How many travellers, and which cabin?"]
    assert [t.say for t in out.turns] == made[0].read
    assert [t.valid for t in out.turns] == [True, True, False]
