"""The route ladder on the tiny student: every route runs on the same scenarios; the prefilled
form never names an unknown node; the user reads the say filled in."""

import json

import polars as pl
import pytest

from subterra.evaluation import EvalConfig, evaluate
from subterra.routes import ROUTES, SPECS, local_routes

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
    from subterra.runtime.encoding import Codec
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
