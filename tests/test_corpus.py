"""The offline teacher's corpus: coverage, splits, forms, verbatim values, determinism."""

import json
import re

import polars as pl
import pytest

from subterra.corpus import CorpusConfig, CorpusTooLarge, build_corpus
from subterra.forms import parse_form, shown_say
from subterra.paths import edge_coverage, select_paths
from subterra.slot_values import FREE_TYPES
from subterra.teacher import TemplateTeacher
from subterra.workflow import load_workflow

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def mini_workflow():
    return load_workflow(FIXTURES / "mini_booking.yaml")


@pytest.fixture(scope="module")
def corpus(mini_workflow):
    paths = select_paths(mini_workflow, cap=1000, seed=0).paths
    config = CorpusConfig(conversations_per_path=6, holdout_scenarios=40, offscript_rate=0.3, seed=1, sizing="uniform")
    return build_corpus(mini_workflow, paths, TemplateTeacher(seed=0), config)


def test_every_path_and_edge_is_in_training(mini_workflow, corpus):
    train = corpus.filter(pl.col("split") == "train")
    paths = select_paths(mini_workflow, cap=1000, seed=0).paths
    assert train["path_id"].n_unique() == len(paths)
    covered = {e for edges in train["edges"] for e in edges}
    assert covered == {e.id for e in mini_workflow.edges} == edge_coverage(mini_workflow, paths)


def test_splits_sizes_and_disjoint_texts(corpus):
    counts = dict(corpus.group_by("split").len().iter_rows())
    assert counts["holdout"] == counts["test_unseen"] == 40
    train_texts = set(corpus.filter(pl.col("split") == "train")["messages"])
    held_texts = set(corpus.filter(pl.col("split") != "train")["messages"])
    assert not train_texts & held_texts


def test_every_assistant_turn_is_a_form_with_verbatim_values(mini_workflow, corpus):
    templated = 0
    for messages in corpus["messages"]:
        messages = json.loads(messages)
        assert [m["role"] for m in messages[:2]] == ["system", "user"]
        assert messages[0]["content"] == mini_workflow.assistant
        held = {}
        for prev, msg in zip(messages, messages[1:]):
            assert prev["role"] != msg["role"]
            if msg["role"] == "assistant":
                form = parse_form(msg["content"])
                assert form.node in mini_workflow.nodes
                for slot, value in form.slots.items():
                    assert value in prev["content"], (slot, value, prev["content"])
                held.update(form.slots)
                # the say is a template: a held value is its {slot}, and every placeholder names a held value
                shown, complete = shown_say(form.say, held)
                assert complete, (form.say, held)
                assert not any(v in form.say for v in held.values() if len(v) > 3), (form.say, held)
                templated += bool(re.search(r"\{[a-z_]+\}", form.say))
            else:
                assert not re.search(r"\{[a-z_]+\}", msg["content"])
    assert templated  # the mini workflow's say lines name values


def test_test_and_validation_values_of_open_slots_never_in_training(mini_workflow, corpus):
    """Slots of an open value space keep three disjoint sides: training, validation, the test
    sets. A short integer range (travellers 1 to 9) is a closed set: every value is trained."""
    from subterra.slot_values import SlotValueSource

    def values(split):
        out = {}
        for scenario in corpus.filter(pl.col("split").is_in(split))["scenario"]:
            for slot, value in json.loads(scenario)["values"].items():
                out.setdefault(slot, set()).add(value)
        return out

    train, validation, held = values(["train"]), values(["validation"]), values(["holdout", "test_unseen"])
    open_slots = [s for s, spec in mini_workflow.slots.items()
                  if spec.type in FREE_TYPES and not SlotValueSource.for_slot(spec).closed()]
    assert open_slots
    for slot in open_slots:
        assert not train[slot] & held[slot], slot
        assert not train[slot] & validation[slot] and not validation[slot] & held[slot], slot
    assert SlotValueSource.for_slot(mini_workflow.slots["travellers"]).closed()
    assert train["travellers"] & held["travellers"]


def test_a_value_reserved_for_one_slot_is_reserved_for_every_slot_of_its_type():
    """A test value of one slot is no training value of another slot of its type: a student
    that saw a value only as one slot's would read it as that slot's in a test conversation."""
    from subterra.slot_values import SlotValueSource

    people = SlotValueSource("party", "integer", min=1, max=60)
    bags = SlotValueSource("bags", "integer", min=1, max=30)
    (people_train, people_held), (bags_train, bags_held) = people.split_pool(), bags.split_pool()
    assert people_held and bags_held and people_train and bags_train
    assert not set(people_held) & set(bags_train) and not set(bags_held) & set(people_train)
    origin = SlotValueSource("origin", "string", ("Lisbon", "Porto", "Tokyo", "Lima", "Oslo", "Quito", "Cairo", "Rome"))
    destination = SlotValueSource("destination", "string", ("Lisbon", "Porto", "Tokyo", "Lima", "Oslo", "Quito", "Cairo", "Rome"))
    assert origin.split_pool() == destination.split_pool()


def test_training_integers_stay_in_the_slots_range_and_a_short_range_is_trained_whole():
    """Random training integers never leave the slot's declared range ("seats for 444" where a
    party is 1 to 6 would teach the opposite of the workflow); in a range of 1 to 6 every value
    is trained and tested; a wide range keeps its test values out of training."""
    import random

    from subterra.slot_values import SlotValueSource, is_reserved

    rng = random.Random(0)
    people = SlotValueSource("travellers", "integer", min=1, max=6)
    drawn = {people.draw(rng, "train", random_rate=1.0) for _ in range(300)}
    assert drawn == {str(v) for v in range(1, 7)}
    assert {people.draw(rng, "holdout") for _ in range(100)} == drawn
    amount = SlotValueSource("amount", "integer", min=1, max=5000)
    wide = [amount.draw(rng, "train", random_rate=1.0) for _ in range(600)]
    assert all(1 <= int(v) <= 5000 for v in wide) and {len(v) for v in wide} == {1, 2, 3, 4}
    assert not [v for v in wide if is_reserved("integer", v)]
    assert all(is_reserved("integer", amount.draw(rng, "holdout")) for _ in range(50))
    assert not people.in_range("7") and not people.in_range("444") and people.in_range("6")


def test_offscript_behaviour_is_injected(corpus):
    from subterra.offscript import KINDS

    kinds = {k for ks in corpus["offscript"] for k in ks}
    assert kinds == set(KINDS)  # every registered kind


def test_deterministic(mini_workflow, corpus):
    paths = select_paths(mini_workflow, cap=1000, seed=0).paths
    config = CorpusConfig(conversations_per_path=6, holdout_scenarios=40, offscript_rate=0.3, seed=1, sizing="uniform")
    again = build_corpus(mini_workflow, paths, TemplateTeacher(seed=0), config)
    assert again["messages"].to_list() == corpus["messages"].to_list()


def test_unseen_holdout_uses_held_back_phrasings(corpus):
    seen = corpus.filter(pl.col("split") == "holdout")["messages"].to_list()
    unseen = corpus.filter(pl.col("split") == "test_unseen")["messages"].to_list()
    assert sum(a != b for a, b in zip(seen, unseen)) > len(seen) // 2


def test_oversized_corpus_is_refused_before_generation_with_the_numbers(mini_workflow):
    paths = select_paths(mini_workflow, cap=1000, seed=0).paths
    progress = []
    config = CorpusConfig(conversations_per_path=4, holdout_scenarios=200, max_conversations=10, sizing="uniform")
    with pytest.raises(CorpusTooLarge) as refused:
        build_corpus(mini_workflow, paths, TemplateTeacher(), config, progress=lambda done, total: progress.append(done))
    total = len(paths) * 4 + 3 * 200
    assert str(refused.value) == (f"mini_booking: corpus of {total:,} conversations ({len(paths) * 4} over {len(paths)} paths + 200 validation + 2 x 200 held out) "
                                  f"exceeds max_conversations=10")
    assert progress == []  # not one conversation was written


def test_a_correction_names_the_value_it_replaces_and_only_one_slot_held_it():
    """A correction must be scorable: it names the old value, and no other given slot holds it."""
    from dataclasses import replace

    from subterra.paths import select_paths
    from subterra.scenario import make_scenario
    from subterra.simulator import ScriptedUser

    wf = load_workflow(__import__("pathlib").Path("data/workflows/travel_booking.yaml"))
    corrections = 0
    for index, path in enumerate(select_paths(wf, cap=1000, seed=0).paths * 3):
        for split in ("train", "test_unseen"):
            scenario = make_scenario(wf, path, split, index, seed=0, offscript_rate=0.5, random_value_rate=0.5)
            if index % 2:  # party size and bags alike: correcting "2" would not say which
                scenario = replace(scenario, values={**scenario.values, "checked_bags": scenario.values["travellers"]})
            user = ScriptedUser(wf, scenario)
            user.opener()
            node, given = wf.start, {}
            while (turn := user.reply(node)) is not None:
                if turn.kind == "correction":
                    corrections += 1
                    (slot, new), = turn.slots.items()
                    old = given[slot]
                    assert old in turn.text and new in turn.text, turn.text
                    assert [s for s, v in given.items() if v == old] == [slot], (turn.text, given)
                elif turn.kind == "answer":
                    node = next(e.target for e in wf.out_edges(node) if e.id == turn.edge)
                given.update(turn.slots)
    assert corrections > 100


def test_training_can_see_corrections_more_often_than_other_off_script_turns(mini_workflow):
    from collections import Counter

    from subterra.scenario import make_scenario

    paths = select_paths(mini_workflow, cap=1000, seed=0).paths

    def kinds(share):
        found = Counter()
        for i in range(300):
            scenario = make_scenario(mini_workflow, paths[i % len(paths)], "train", i, 0, 0.6, 0.5, share)
            found.update(scenario.offscript.values())
        return found

    even, mostly = kinds(None), kinds(0.8)
    assert even["correction"] < even["unclear"] + even["offtopic"]
    # (where nothing is given yet, no correction is possible: those turns stay unclear or off-topic)
    assert mostly["correction"] > 1.5 * even["correction"]
    assert mostly["unclear"] + mostly["offtopic"] < even["unclear"] + even["offtopic"]
    assert abs(sum(even.values()) - sum(mostly.values())) < 0.1 * sum(even.values())  # about as many, another mix


@pytest.mark.parametrize("phrasings", ["core", "wide"])
def test_training_never_speaks_a_held_back_generic_line_and_the_unseen_holdout_does(mini_workflow, phrasings):
    """Our generic pools name their held-back lines; training never contains one, in either corpus
    variety; the wide corpus speaks lines the core one never does, the core one only the original lines."""
    from subterra import phrasing as ph
    from subterra.offscript import KINDS

    paths = select_paths(mini_workflow, cap=1000, seed=0).paths
    config = CorpusConfig(conversations_per_path=6, holdout_scenarios=40, offscript_rate=0.3, seed=1, phrasings=phrasings, sizing="uniform")
    corpus = build_corpus(mini_workflow, paths, TemplateTeacher(seed=0), config)

    def user_lines(split):
        return [m["content"] for msgs in corpus.filter(pl.col("split") == split)["messages"]
                for m in json.loads(msgs) if m["role"] == "user"]

    def matcher(lines):
        return [re.compile(re.escape(line).replace(r"\{old\}", ".+").replace(r"\{new\}", ".+")) for line in lines]

    pools = (ph.OPENERS, ph.ACKNOWLEDGEMENTS) + tuple(kind.user_lines for kind in KINDS.values())
    for pool in pools:
        assert pool.unseen and not set(pool.unseen) & set(pool.wide) and set(pool.seen) <= set(pool.wide)
        assert ph.phrasing_pool(pool, ph.UNSEEN) == pool.unseen and ph.phrasing_pool(pool, ph.SEEN) == pool.seen
    held_back = matcher(line for pool in pools for line in pool.unseen)
    extra = matcher(line for pool in pools for line in pool.extra)
    train = user_lines("train")
    assert not [line for line in train if any(p.fullmatch(line) for p in held_back)]
    assert [line for line in user_lines("test_unseen") if any(p.fullmatch(line) for p in held_back)]
    spoke_extra = [line for line in train if any(p.fullmatch(line) for p in extra)]
    assert bool(spoke_extra) == (phrasings == "wide")
    assert ph.phrasing_pool(("a", "b", "c", "d"), ph.UNSEEN) == ("d",)  # a workflow's own lines: the last quarter


def test_the_core_corpus_is_the_one_the_measured_compiles_wrote():
    """``phrasings: core`` (the default) writes the corpus of the original pools, byte for byte, as
    the tiny student's measured compiles did (corpus format 6: a validation split with its own lines and
    values, integers in their slot's range, short integer ranges trained whole, held-out sets opening half with the request;
    a change of it bumps ``CORPUS_FORMAT``, so no recompile reuses a conversation of the old one)."""
    import hashlib

    wf = load_workflow(__import__("pathlib").Path("data/workflows/travel_booking.yaml"))
    config = CorpusConfig(conversations_per_path=1, max_train_conversations=800, holdout_scenarios=20, train_offscript_rate=0.3,
                          train_correction_share=0.5, sizing="uniform")
    corpus = build_corpus(wf, select_paths(wf).paths, TemplateTeacher(), config)
    digest = hashlib.sha256("\n".join(corpus["messages"]).encode()).hexdigest()[:16]
    assert (corpus.height, digest) == (146, "576f64140cd6e60a")  # format 6


def test_a_conversation_that_opens_with_the_request_moves_past_the_greeting_with_the_value_held():
    """The first message may carry the request ("Lisbon, please."): the agent's first turn is then
    the step after the start, holding the value; the held-out sets open half one way, half the other."""
    wf = load_workflow(__import__("pathlib").Path("data/workflows/travel_booking.yaml"))
    config = CorpusConfig(conversations_per_path=2, max_train_conversations=100, holdout_scenarios=40, request_share=1.0, sizing="uniform")
    corpus = build_corpus(wf, select_paths(wf).paths[:10], TemplateTeacher(), config)
    for row in corpus.iter_rows(named=True):
        scenario = json.loads(row["scenario"])
        messages = json.loads(row["messages"])
        first = json.loads(messages[2]["content"])
        if scenario["opening"] == "request":
            assert first["node"] == "ask_origin" and first["slots"] == {"destination": scenario["values"]["destination"]}
            assert scenario["values"]["destination"] in messages[1]["content"] and row["edges"][0] == "greet>ask_origin"
        else:
            assert first["node"] == "greet" and first["slots"] == {}
    train = corpus.filter(pl.col("split") == "train")
    assert all(json.loads(s)["opening"] == "request" for s in train["scenario"])
    held = [json.loads(s)["opening"] for s in corpus.filter(pl.col("split") == "holdout")["scenario"]]
    assert 10 <= held.count("request") <= 30 and 10 <= held.count("greeting") <= 30


def test_a_request_may_answer_several_steps_in_its_first_message_and_the_held_out_sets_stay_as_they_were():
    """``request_steps``: a training request answers the start step and up to that many steps after
    it in one message ("Lisbon, from Dublin, on 3 May"); the agent's first turn is the step after
    the last one answered, holding every value given. Held-out conversations never change."""
    wf = load_workflow(__import__("pathlib").Path("data/workflows/travel_booking.yaml"))
    paths = select_paths(wf).paths[:10]
    base = dict(conversations_per_path=4, max_train_conversations=100, holdout_scenarios=20, request_share=1.0, sizing="uniform")
    one = build_corpus(wf, paths, TemplateTeacher(), CorpusConfig(**base))
    many = build_corpus(wf, paths, TemplateTeacher(), CorpusConfig(**base, request_steps=3))
    held = lambda df: df.filter(pl.col("split") != "train").sort("conversation_id")["messages"].to_list()  # noqa: E731
    assert held(one) == held(many)
    answered = []
    for row in many.filter(pl.col("split") == "train").iter_rows(named=True):
        scenario, messages = json.loads(row["scenario"]), json.loads(row["messages"])
        first = json.loads(messages[2]["content"])
        steps = scenario["opening_steps"]
        answered.append(steps)
        node = wf.start
        for edge in row["edges"][:steps]:
            node = next(e.target for e in wf.out_edges(node) if e.id == edge)
        assert first["node"] == node  # past every step the message answered
        for slot, value in first["slots"].items():
            assert value in messages[1]["content"] and scenario["values"][slot] == value
        assert set(first["slots"]) == set(wf.collected_between(None, node))
    assert set(answered) == {1, 2, 3}
