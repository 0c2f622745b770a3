"""The programs of one assistant turn (``subterra.runtime.turns``): the prefilled form, a free text read
leniently."""

from subterra.runtime.actions import Choice, Score
from subterra.runtime.encoding import Codec
from subterra.runtime.turns import TurnCounter, fill_form, read_form


def test_a_free_text_is_read_leniently_but_is_not_a_valid_form():
    form, valid = read_form('{"node": "greet", "slots": {"destination": "Oslo"}, "say": "Hi"}')
    assert valid and form.node == "greet" and form.slots == {"destination": "Oslo"}
    form, valid = read_form('Sure! {"node": "ask_date", "slots": {"destination": "Oslo"}, "say": "When')
    assert not valid and form.node == "ask_date" and form.slots == {"destination": "Oslo"}
    form, valid = read_form("Hello, how can I help?")
    assert not valid and form.node == "" and form.slots == {}


def test_a_form_holds_no_more_slots_than_one_step_collects(trained, mini_workflow):
    """A model that always asks for one more slot still fills at most as many as a step of the
    workflow collects (two in the mini workflow), though the message could fill four."""
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
