"""Which slots and values a form is offered after a message (``subterra.runtime.offers``): only what
the message can fill, a held value not again beside another, a correction refills the slot it names."""

from dataclasses import replace

from subterra.runtime.actions import Choice, Score
from subterra.runtime.encoding import Codec, ReadingRules
from subterra.runtime.offers import offered_keys, offered_values
from subterra.runtime.turns import TurnCounter, fill_form


def offered_slot_names(codec, message: str, held: dict | None = None) -> set[str]:
    """Drive the form program to ask for every slot it will offer after ``message`` (with
    ``held``, the values the conversation holds): the slot names it ever allows."""

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
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    lexicon = frozenset({"sorry", "i", "meant", "not", "it", "is"})  # values: runs between these
    codec = Codec(tokenizer, mini_workflow, lexicon, rules=replace(ReadingRules(), declared_values_whole=False))

    def destinations(message: str, held: dict | None) -> set[str]:
        return set(offered_values(codec, message, held)["destination"][0])

    message = "Sorry, I meant Lisbon, not Porto."
    assert destinations(message, None) == {"Lisbon", "Porto"}
    assert destinations(message, {"destination": "Tokyo"}) == {"Lisbon", "Porto"}  # the held value is not in the message
    assert destinations(message, {"destination": "Porto"}) == {"Lisbon"}
    assert destinations("It is Porto.", {"destination": "Porto"}) == {"Porto"}  # the only one: still offered
    # ``declared_values_whole``: a declared value said that the slot does not hold is offered alone
    assert "Lisbon" in mini_workflow.slots["destination"].values
    codec = Codec(tokenizer, mini_workflow, lexicon, rules=ReadingRules())
    declared = "Sorry, I meant Oslo, not Lisbon."
    assert destinations(declared, {"destination": "Lisbon"}) == {"Oslo"}
    assert destinations("Oslo, not Rome", None) == {"Oslo"}  # Oslo is declared, Rome is not
