"""Three kinds of held-out language kept apart: validation decides, the test sets only report.

Checked on the tables a real compile and repair round write, not on code paths: no test-set line,
value or scenario reaches training, the repair round or the promotion gate. And the judge of a
turn: a reply that belongs to another step fails strict pass; a reply with a placeholder the
conversation does not hold is never shown.
"""

import json
import re

import polars as pl

from subterra import phrasing as ph
from subterra.evaluation import VALIDATION_SETS, score, score_script
from subterra.forms import FALLBACK_SAY, Form, user_say
from subterra.natural import load_natural_sets
from subterra.routes import Transcript
from subterra.runtime.turns import TurnRecord
from subterra.say_judge import SayJudge
from subterra.scenario import Scenario
from subterra.simulator import UserTurn
from subterra.slot_values import SlotValueSource, value_side
from subterra.workflow import load_workflow
from test_assets import KEY, failure_text, materialize, metadata


_PREFIXES = "|".join(re.escape(p) for p in set(ph.USER_PREFIXES + ph.WIDE_PREFIXES) if p)
_SUFFIXES = "|".join(re.escape(p) for p in set(ph.USER_SUFFIXES + ph.WIDE_SUFFIXES) if p)


def _pattern(template: str) -> re.Pattern:
    """A regex a whole user line matches if it speaks ``template``, with any values filled in and
    any of the user's decorations around it."""
    parts = re.split(r"\{[a-z][a-z0-9_]*\}", template.replace("{{", "{").replace("}}", "}"))
    body = ".+".join(re.escape(p) for p in parts)
    return re.compile(f"(?:{_PREFIXES})?{body}(?:{_SUFFIXES})?", re.IGNORECASE)


def _user_lines(messages: str) -> list[str]:
    return [m["content"] for m in json.loads(messages) if m["role"] == "user"]


def test_no_test_set_line_value_or_scenario_reaches_training_repair_or_the_gate(settings, store, resources, instance):
    from subterra_dagster.assets import LADDER_ASSETS
    from subterra_dagster.assets.settings import RepairSettings

    repair = RepairSettings(rounds=1, per_failure=1, max_per_cluster=2, max_conversations=4, replay_ratio=0.5, max_steps=2)
    result = materialize(LADDER_ASSETS, resources, instance, promoted_model=repair)
    assert result.success, failure_text(result)
    wf = load_workflow(settings.workflow_file(KEY))
    natural, problems = load_natural_sets(wf, settings.natural_dir)
    assert not problems and set(natural) == {"natural", "validation_natural"}
    natural_lines = {t.user.casefold() for c in natural["natural"].conversations for t in c.turns}
    natural_lines |= {c.greeting.casefold() for c in natural["natural"].conversations}
    held_back = [_pattern(line) for edge in wf.edges for line in ph.phrasing_pool(edge.user, ph.UNSEEN)]
    held_back += [_pattern(line) for pool in (ph.OPENERS, ph.UNCLEAR, ph.OFF_TOPIC, ph.ACKNOWLEDGEMENTS) for line in pool.unseen]

    corpus = store.read("validated_dataset", KEY)
    test_rows = corpus.filter(pl.col("split").is_in(["holdout", "test_unseen"]))
    assert corpus.filter(pl.col("split") == "validation").height > 0 and test_rows.height > 0

    def assert_clean(rows: pl.DataFrame, what: str) -> None:
        assert not set(rows["messages"]) & set(test_rows["messages"]), what
        for messages, scenario in rows.select("messages", "scenario").iter_rows():
            for line in _user_lines(messages):
                assert line.casefold() not in natural_lines, (what, line)
                assert not any(p.fullmatch(line) for p in held_back), (what, line)
            values = Scenario.from_json(scenario).values
            for slot, value in values.items():
                source = SlotValueSource.for_slot(wf.slots[slot])
                if not source.closed():
                    assert value_side(source.type, value) == "train", (what, slot, value)
                assert source.in_range(value), (what, slot, value)  # never a value the workflow rules out

    # training: the compile's training set, as trained (the run's train.parquet), and the repair round's
    runs = sorted(settings.runs_dir.joinpath(KEY).glob("*/train.parquet"))
    assert len(runs) == 2  # the compile's and the repair round's
    for run in runs:
        assert_clean(pl.read_parquet(run), str(run))
    # a test set's held-back workflow lines never reach training (the lines whole, in any values)
    test_unseen_texts = [line for m in test_rows.filter(pl.col("split") == "test_unseen")["messages"] for line in _user_lines(m)]
    assert any(p.fullmatch(t) for p in held_back for t in test_unseen_texts)  # the test set does speak them

    # the repair round was built and gated on validation only
    clusters = store.read("repair_map", KEY)
    assert clusters.height and all(set(json.loads(h)) <= set(VALIDATION_SETS) for h in clusters["holdouts"])
    assert all(e["scenario_id"].startswith("validation-") for ex in clusters["examples"] for e in json.loads(ex))
    decisions = store.read("promotions", KEY).sort("round")
    validation_played = store.read("eval_scenarios", KEY).filter(
        (pl.col("route") == "compiled_prefill") & (pl.col("set") == "validation"))
    assert decisions["scenarios"].to_list() == [validation_played.height] * 2
    assert set(store.read("repair_scores", KEY)["set"]) == {"validation"}
    # the promotion gate (the asset check and good_models) read validation's strict pass, not a test set's
    scores = store.read("eval_scores", KEY).filter(pl.col("route") == "compiled_prefill")
    by_set = dict(zip(scores["set"], scores["strict_pass"]))
    assert set(by_set) == {"validation", "validation_natural", "natural", "holdout", "test_unseen"}
    assert store.read("eval_runs", KEY)["strict_pass"][0] == by_set["validation"]
    # the report shows the test sets first, each with its n and interval
    headline = metadata(result, LADDER_ASSETS[5])["headline"]
    assert headline.index("natural (people") < headline.index("test_unseen") < headline.index("holdout (seen")
    assert headline.index("holdout (seen") < headline.index("validation (choices)")
    natural_row = scores.filter(pl.col("set") == "natural").row(0, named=True)
    assert natural_row["scenarios"] == 4  # two conversations, each played with both openings
    assert natural_row["strict_pass_low"] <= natural_row["strict_pass"] <= natural_row["strict_pass_high"]


def _transcript(turns, user_texts) -> Transcript:
    t = Transcript("s")
    for (node, slots, say), text in zip(turns, user_texts):
        t.heard(UserTurn(text, "answer", {}, None))
        t.turns.append(TurnRecord(node=node, slots=slots, say=say, raw="", valid=True, tokens_in=1, tokens_out=1))
    t.ended = True
    return t


def test_a_reply_that_belongs_to_another_step_fails_strict_pass(mini_workflow):
    wf = mini_workflow
    scenario = Scenario("holdout-00000", "holdout", ("greet>ask_date", "ask_date>ask_count", "ask_count>human#2"),
                        {"destination": "Lisbon", "date": "3 May 2027", "travellers": "2", "cabin": "economy"})
    reference = [{"role": "system", "content": ""}]
    for node, slots in [("greet", {}), ("ask_date", {"destination": "Lisbon"}), ("ask_count", {"date": "3 May 2027"}), ("human", {})]:
        reference += [{"role": "user", "content": "x"}, {"role": "assistant", "content": Form(node, slots, "").to_json()}]
    texts = ["Hi.", "Lisbon, please.", "On 3 May 2027.", "Get me an agent."]
    right = [("greet", {}, "Hello, where are you headed?"), ("ask_date", {"destination": "Lisbon"}, "When do you want to leave for Lisbon?"),
             ("ask_count", {"date": "3 May 2027"}, "For how many passengers, economy or business?"),
             ("human", {}, "I am connecting you to a colleague.")]
    judge = SayJudge(wf)
    assert score(wf, scenario, reference, _transcript(right, texts), judge=judge)["strict_pass"]
    # the right step and values, but the reply asks the date question again at the count step
    wrong_say = list(right)
    wrong_say[2] = ("ask_count", {"date": "3 May 2027"}, "What date should I book?")
    scored = score(wf, scenario, reference, _transcript(wrong_say, texts), judge=judge)
    assert not scored["strict_pass"] and scored["says_right"] == 3
    error = json.loads(scored["first_error"])
    assert error["turn"] == 2 and error["kind"] == "wrong_say" and error["say_verdict"] == "another_step"
    # a reply naming a value the user never gave fails too
    invented = list(right)
    invented[1] = ("ask_date", {"destination": "Lisbon"}, "When do you want to leave for Tokyo?")
    error = json.loads(score(wf, scenario, reference, _transcript(invented, texts), judge=judge)["first_error"])
    assert error["turn"] == 1 and error["say_verdict"] == "unheld_value"
    # natural scripts are judged the same way, and stop counting at the first wrong turn
    natural, _ = load_natural_sets(wf, "tests/fixtures/natural")
    conv = natural["natural"].conversations[1]  # Reykjavik, the 3rd of August, then a person
    script = conv.script(wf.start, "request")
    got = [("ask_date", {"destination": "reykjavik"}, "What date should I book?"),
           ("ask_count", {"date": "3 August 2027"}, "How many travellers, and which cabin?"),
           ("human", {}, "One moment, a person will take over.")]
    natural_scenario = Scenario(f"{conv.id}-request", "natural", (), {})
    good = score_script(wf, natural_scenario, script, _transcript(got, [t.user for t in script]), judge=judge)
    assert good["strict_pass"] and good["partial_credit"] == 1.0  # values compared without case
    got[1] = ("ask_count", {"date": "3 August 2027"}, "I am connecting you to a colleague.")
    bad = score_script(wf, natural_scenario, script, _transcript(got, [t.user for t in script]), judge=judge)
    assert not bad["strict_pass"] and bad["partial_credit"] == 1 / 3


def test_a_reply_with_a_placeholder_the_conversation_does_not_hold_is_never_shown():
    lines = ("Where will you be flying to {destination} from?", "And which city are you departing from?")
    assert user_say("Flying to {destination}?", {"destination": "Oslo"}) == ("Flying to Oslo?", True)
    shown, complete = user_say("Where will you be flying to {destination} from?", {}, lines)
    assert (shown, complete) == ("And which city are you departing from?", False)
    shown, complete = user_say("Booked for {passenger_name}.", {}, ("Done, {passenger_name}.",))
    assert (shown, complete) == (FALLBACK_SAY, False) and "{" not in shown


def test_the_placeholder_guard_sits_between_every_route_and_its_user(mini_workflow):
    """The lockstep conversation program shows the user the guarded text and counts the form invalid."""
    from subterra.routes import Episode, conversation_program
    from subterra.runtime.encoding import Codec
    from subterra.simulator import Users

    class Chars:  # a tokenizer stand-in: one id per character
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    def turn_program(message, counter, held, at=None):
        node = "greet" if message == "Hi." else "ask_date"
        say = "Hello, where are you headed?" if node == "greet" else "When do you want to leave for {destination}?"
        return Form(node, {}, say), Form(node, {}, say).to_json(), True
        yield  # a generator, as a route's turn program is

    class User:
        def __init__(self, wf, scenario):
            self.n = 0

        def opener(self):
            return UserTurn("Hi.", "opener")

        def reply(self, node, say=""):
            self.n += 1
            return UserTurn("Somewhere.", "answer") if self.n < 2 else None

    codec = Codec.__new__(Codec)
    codec.tok = Chars()
    out = Transcript("s")
    program = conversation_program(codec, mini_workflow, Episode(Scenario("s", "holdout", (), {}), [], 5), turn_program, 0,
                                   out, lambda: 0.0, Users("t", User))
    for _ in program:
        pass
    assert [t.say for t in out.turns] == ["Hello, where are you headed?", "What date should I book?"]
    assert [t.valid for t in out.turns] == [True, False]  # the model's own say was incomplete: an invalid form


def test_a_broken_natural_file_names_the_file_line_and_fault_and_is_skipped(mini_workflow, tmp_path):
    """A natural set that no longer fits its workflow (a renamed step, an unknown slot, a date in
    the wrong form) is reported line by line and skipped; the other set still loads."""
    from subterra.natural import edge_coverage, load_natural

    (tmp_path / "test").mkdir()
    (tmp_path / "validation").mkdir()
    (tmp_path / "test" / "mini_booking.yaml").write_text(
        "workflow: mini_booking\ntoday: 2027-03-01\nconversations:\n"
        "  - id: a\n    greeting: hi\n    turns:\n"
        "      - user: Porto\n        node: ask_dte\n"
        "      - user: tomorrow\n        node: ask_count\n        slots: {date: tomorrow, seat: 4C}\n")
    good = "tests/fixtures/natural/validation/mini_booking.yaml"
    (tmp_path / "validation" / "mini_booking.yaml").write_text(open(good).read())
    sets, problems = load_natural_sets(mini_workflow, tmp_path)
    assert set(sets) == {"validation_natural"}
    assert any(p.endswith("test/mini_booking.yaml:8: a: unknown node 'ask_dte'") for p in problems), problems
    assert any(":11: a: date 'tomorrow': a date slot's value is written like 14 March 2027" in p for p in problems)
    assert any(":11: a: unknown slot 'seat'" in p for p in problems)
    # two branches of one step lead to the same next step: a line says which one it takes
    parallel = tmp_path / "p.yaml"
    parallel.write_text(
        "workflow: mini_booking\ntoday: 2027-03-01\nconversations:\n"
        "  - id: b\n    greeting: hi\n    turns:\n"
        "      - user: Oslo\n        node: ask_date\n        slots: {destination: Oslo}\n"
        "      - user: 2 may\n        node: ask_count\n        slots: {date: 2 May 2027}\n"
        "      - user: nope, forget it\n        node: cancel\n        branch: 1\n")
    coverage = edge_coverage(mini_workflow, load_natural(parallel, mini_workflow))
    assert coverage["ask_count>cancel#1"] == 1
    parallel.write_text(parallel.read_text().replace("branch: 1", "branch: 2"))
    try:
        load_natural(parallel, mini_workflow)
        raise AssertionError("a branch that goes elsewhere must be refused")
    except ValueError as exc:
        assert "p.yaml:15: b: branch 2 of 'ask_count' goes to 'human', not 'cancel'" in str(exc)
