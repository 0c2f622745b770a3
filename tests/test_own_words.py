"""People's own words: conversations that open with the request, greetings that are never values."""

from dataclasses import replace
from pathlib import Path

from subterra.runtime.candidates import courtesy_only
from subterra.runtime.encoding import NO_RULES, Codec, ReadingRules
from subterra.workflow import load_workflow

NEEDING = replace(NO_RULES, moves_need_values=True)


def test_a_greeting_or_a_thanks_is_never_offered_as_a_value(trained, mini_workflow):
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.student import load_compiled

    assert courtesy_only("hiya!!") and courtesy_only("Good morning") and courtesy_only("hey there")
    assert not courtesy_only("Hi Lisbon") and not courtesy_only("Cape Town") and not courtesy_only("2")
    from subterra.runtime.candidates import value_spans

    assert value_spans("barcelona (BCN)", frozenset({"from"})) == ["barcelona", "BCN"]  # an aside is no part of a value
    assert "barcelona (BCN" not in value_spans("barcelona (BCN)")
    model_dir = trained[1].model_dir
    tokenizer, _ = load_compiled(model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(model_dir), whole_runs(model_dir))
    assert codec.value_candidates("destination", "hiya")[0] == {}  # nothing to copy: the form can hold no value
    assert "Porto" in codec.value_candidates("destination", "hi, Porto please")[0]
    # a message of English frame words only offers none of them ("anyone" is no city)
    assert codec.value_candidates("destination", "Hello, anyone there?")[0] == {}
    assert "Oslo" in codec.value_candidates("destination", "anyone there? Oslo")[0]
    assert "of us" not in codec.value_candidates("destination", "just the two of us")[0]  # joiners of names are none either
    lenient = Codec(tokenizer, mini_workflow, load_lexicon(model_dir), whole_runs(model_dir), rules=replace(ReadingRules(), courtesy_values=True, function_words=False))
    assert "hiya" in lenient.value_candidates("destination", "hiya")[0]


def test_numbers_and_dates_in_peoples_words_are_offered_normalised_to_the_form(trained, mini_workflow):
    """"two of us" -> 2, "March 14th" -> 14 March 2027, "next Friday" read from the conversation's
    date: the runtime offers the normalised value (never the words) and the form holds it."""
    import datetime as dt

    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import TurnCounter, fill_form
    from subterra.student import load_compiled
    from subterra.typed_values import parsed_values

    today = dt.date(2027, 3, 1)  # a Monday
    assert parsed_values("integer", "two of us, economy", today) == ("2",)
    assert parsed_values("integer", "just me", today) == ("1",)
    assert parsed_values("integer", "me and a friend", today) == ("2",)  # a party said as who comes
    assert parsed_values("integer", "my wife and I", today) == ("2",)
    assert "5" in parsed_values("integer", "two adults and three kids", today)
    assert parsed_values("date", "March 14th", today) == ("14 March 2027",)
    assert parsed_values("date", "the 3rd of August", today) == ("3 August 2027",)
    assert parsed_values("date", "the wifi drops 24/7", today) == ()  # round the clock, not 24 July
    assert parsed_values("date", "on 24/7/2027", today) == ("24 July 2027",)
    assert parsed_values("date", "next Friday", today) == ("5 March 2027",)
    assert parsed_values("date", "next Friday", dt.date(2027, 6, 1)) == ("4 June 2027",)  # anchored to the day
    # a two-digit year lands in the slot's range: a date of birth "5/5/95" is 1995, not 2095
    assert parsed_values("date", "5/5/95", today, "1930-01-01", "2009-12-31") == ("5 May 1995",)
    assert parsed_values("date", "born 8 Feb 1996", today, "1930-01-01", "2009-12-31") == ("8 February 1996",)
    assert parsed_values("date", "sometime in April", today) == ()  # a month is no day
    # a day said without a year takes the year that puts it in the slot's range (an incident lies behind)
    autumn, past = dt.date(2027, 9, 10), ("2026-09-01", "2027-08-31")
    assert parsed_values("date", "Tuesday 31st August", autumn, *past) == ("31 August 2027",)
    assert parsed_values("date", "31 August 2028", autumn, *past) == ("31 August 2028",)  # a year said is kept
    assert parsed_values("date", "on the M6 on the 20th of august", autumn, *past) == ("20 August 2027",)
    assert parsed_values("date", "I was on the A40 on 3 May", autumn, *past) == ("3 May 2027",)
    assert parsed_values("date", "the day after tomorrow", today) == ("3 March 2027",)  # not tomorrow
    assert parsed_values("date", "a week from today", today) == ("8 March 2027",)  # not a week ago
    assert parsed_values("date", "the cheapest day next month", today) == ()
    assert parsed_values("date", "1986-04-22", today, "1930-01-01", "2009-12-31") == ("22 April 1986",)  # year first
    may = dt.date(2027, 5, 1)  # a Saturday: the next 8th that is a Tuesday is in June
    assert parsed_values("date", "tuesday the 8th then", may) == ("8 June 2027",)
    assert parsed_values("date", "Friday the 13th of August", may) == ("13 August 2027",)  # a month said is kept
    model_dir = trained[1].model_dir
    tokenizer, model = load_compiled(model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(model_dir), whole_runs(model_dir))
    offered = offered_values(codec, "two of us, in economy", None, today)
    assert list(offered["travellers"][0]) == ["2"] and "economy" in offered["cabin"][0]
    assert list(offered_values(codec, "March 14th works", None, today)["date"][0]) == ["14 March 2027"]
    assert "date" not in offered_values(Codec(tokenizer, mini_workflow, rules=replace(ReadingRules(), typed_values=False)), "March 14th works", None, today)
    # through the form: whatever the model chooses, a count or a date it holds is the normalised value
    from subterra.runtime.lockstep import Lockstep

    driver = Lockstep(model, codec.banned_in_say, codec.masks, max_draft=0)
    for message in ("two of us, in economy", "March 14th works", "next Friday please"):
        turn = {}

        def program(message=message):
            form, _raw, _valid = yield from fill_form(codec, message, 8, TurnCounter(), {}, today=today)
            turn["form"] = form

        driver.run([program()], 512)
        slots = turn["form"].slots
        assert slots.get("travellers") in (None, "2") and slots.get("date") in (None, "14 March 2027", "5 March 2027")


def test_a_move_collects_the_slots_of_the_steps_it_passes(mini_workflow):
    wf = mini_workflow
    assert wf.collected_between(None, "greet") == ()  # the greeting: nothing asked yet
    assert wf.collected_between(None, "ask_date") == ("destination",)  # a first message with the request
    assert wf.collected_between("greet", "ask_count") == ("destination", "date")  # past two steps at once
    assert wf.collected_between("ask_count", "confirm") == ("travellers", "cabin")
    assert wf.collected_between("ask_count", "human") == ()
    assert wf.collected_between("ask_date", "ask_date") == ()  # a step kept (a correction) asks nothing new
    from pathlib import Path

    from subterra.workflow import load_workflow

    travel = load_workflow(Path(__file__).parents[1] / "data" / "workflows" / "travel_booking.yaml")
    assert travel.collected_between("payment", "booked") == ()  # by card or with miles: only one collects the number
    assert "loyalty_number" in travel.collected_between("payment", "booked", surely=False)  # but the move may hold it
    assert travel.collected_between(None, "choose_cabin") == ("destination", "origin", "departure_date", "travellers")


def test_the_slots_a_move_collects_are_filled_first(trained, mini_workflow):
    """With ``edge_slots``, a form that moves from the date question to the next step holds the
    date the message gives, whatever else the message could be read as."""
    import copy
    import datetime as dt

    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.lockstep import Lockstep
    from subterra.runtime.turns import TurnCounter, fill_form
    from subterra.student import load_compiled

    model_dir = trained[1].model_dir
    tokenizer, model = load_compiled(model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(model_dir), whole_runs(model_dir))
    driver = Lockstep(model, codec.banned_in_say, codec.masks, max_draft=0)
    held = {"destination": "Lisbon"}
    forms = {}
    for at, to in (("ask_date", "ask_count"), ("greet", "ask_count"), (None, "ask_count")):
        moving = copy.copy(codec)  # the model's node choice made for it: the move under test
        moving.node_candidates = {to: codec.node_candidates[to]}

        def program(at=at, moving=moving):
            form, _raw, _valid = yield from fill_form(moving, "Lima, Sept 21, 2 of us", 8, TurnCounter(), held,
                                                      today=dt.date(2027, 3, 1), at=at,
                                                      rules=replace(NO_RULES, edge_slots=True))
            forms[at] = form

        driver.run([program()], 512)
    assert forms["ask_date"].slots["date"] == "21 September 2027"
    assert set(list(forms["greet"].slots)[:2]) == {"destination", "date"}  # moving past two steps fills both first
    assert forms["greet"].slots["date"] == "21 September 2027" and forms["greet"].slots["destination"] != "Lisbon"
    assert set(list(forms[None].slots)[:2]) == {"destination", "date"}


def test_training_typed_as_people_type_keeps_every_value_a_span_and_the_holdouts_clean(mini_workflow):
    import json

    from subterra.corpus import CorpusConfig, build_corpus
    from subterra.forms import parse_form
    from subterra.paths import select_paths
    from subterra.teacher import TemplateTeacher

    paths = select_paths(mini_workflow, cap=100, seed=0).paths
    config = CorpusConfig(conversations_per_path=3, holdout_scenarios=6, sizing="uniform")
    clean = build_corpus(mini_workflow, paths, TemplateTeacher(), config)
    noisy = build_corpus(mini_workflow, paths, TemplateTeacher(), CorpusConfig(**{**config.__dict__, "noise_share": 1.0}))
    held = lambda df: df.filter(df["split"] != "train").sort("conversation_id")["messages"].to_list()  # noqa: E731
    assert held(clean) == held(noisy)  # people's typing is taught, never tested on
    lowered = 0
    for messages in noisy.filter(noisy["split"] == "train")["messages"]:
        turns = json.loads(messages)
        for user, reply in zip(turns, turns[1:]):
            if user["role"] != "user" or reply["role"] != "assistant":
                continue
            for slot, value in parse_form(reply["content"]).slots.items():
                if mini_workflow.slots[slot].type == "enum":
                    assert value in mini_workflow.slots[slot].values
                else:
                    assert value in user["content"], (value, user["content"])
                    lowered += value.islower()  # a line typed in lower case holds its value so
    assert lowered
    assert noisy.filter(noisy["split"] == "train")["messages"].to_list() != clean.filter(clean["split"] == "train")["messages"].to_list()


def test_its_frame_is_cut_from_a_value_even_when_a_declared_value_has_an_apostrophe():
    """"It's Niamh Keane" gives the name, not "It's Niamh Keane", in a workflow that declares
    "O'Neill's" among its values (its "s" is what an apostrophe leaves, not a value word)."""
    from subterra.lexicon import with_function_words
    from subterra.runtime.candidates import value_spans
    from subterra.workflow import Workflow, load_workflow

    definition = load_workflow(Path(__file__).parent / "fixtures" / "mini_booking.yaml").to_dict()
    definition["slots"]["destination"]["values"] += ["O'Neill's", "The Crown"]
    # an address or an id is no name: its pieces ("it", "i", "in") stay frame words
    definition["slots"]["email"] = {"type": "string", "values": ["anna.k@mail.it", "i.m.kaur@post.in", "ops@desk.io"]}
    wf = Workflow.from_dict(definition)
    lexicon = with_function_words(frozenset({"table"}), wf)
    assert value_spans("It's Niamh Keane", lexicon) == ["Niamh Keane"]
    assert value_spans("it's 07372 468150", lexicon) == ["07372 468150"]
    assert value_spans("Hi, I'm Hannah Lindqvist, I use it in the office", lexicon)[0] == "Hannah Lindqvist"
    assert "crown" not in lexicon and {"it", "i", "in", "m"} <= lexicon  # a word of a declared name stays a value word


def test_a_move_that_collects_a_value_needs_one_in_the_message(trained, mini_workflow):
    """``moves_need_values``: a bare greeting can keep the greeting step, never move on as if it
    had named a city; a message with a value, or a held one, may move on."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.lockstep import Lockstep
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import TurnCounter, fill_form, moves_offered
    from subterra.student import load_compiled

    model_dir = trained[1].model_dir
    tokenizer, model = load_compiled(model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(model_dir), whole_runs(model_dir))
    bare = moves_offered(codec, offered_values(codec, "hiya", None, None), None, None, NEEDING)
    assert list(bare) == ["greet"]  # every other step lies past the destination question
    assert "ask_date" in moves_offered(codec, offered_values(codec, "hi, Lisbon please", None, None), None, None, NEEDING)
    assert "ask_date" in moves_offered(codec, {}, {"destination": "Lisbon"}, None, NEEDING)  # held: nothing to name again
    driver = Lockstep(model, codec.banned_in_say, codec.masks, max_draft=0)
    forms = []

    def program(message):
        form, _raw, _valid = yield from fill_form(codec, message, 8, TurnCounter(), {},
                                                  rules=replace(NO_RULES, moves_need_values=True))
        forms.append(form)

    driver.run([program(m) for m in ("hiya", "hello there", "good morning")], 512)
    assert forms and all(mini_workflow.collected_between(None, f.node) == () for f in forms)


def test_a_number_or_date_the_step_asks_for_moves_the_conversation_on(trained, mini_workflow):
    """``answers_move_on``: "the 3rd of August" after "when do you leave?" cannot keep the date
    step; a message with no date can, and so can a date the conversation already holds (a
    correction). An ordinal is never a count."""
    import datetime as dt

    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled
    from subterra.typed_values import parsed_values

    today = dt.date(2027, 3, 1)
    assert parsed_values("integer", "the 2nd of July", today) == () and parsed_values("integer", "2 of us on the 3rd", today) == ("2",)
    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    held = {"destination": "Lisbon"}

    def moves(message, held=held, on=True, at="ask_date", pick=False):
        rules = replace(NO_RULES, moves_need_values=True, answers_move_on=on, answers_pick_moves=pick)
        return moves_offered(codec, offered_values(codec, message, held, today), held, at, rules)

    assert "ask_date" not in moves("the 3rd of August") and "ask_count" in moves("the 3rd of August")
    assert "ask_date" in moves("the 3rd of August", on=False)
    assert "ask_date" in moves("sorry, what?")
    assert "ask_date" in moves("make that the 4th of August", {**held, "date": "3 August 2027"})
    # answers_pick_moves: the answer goes along a way that collects it, never to a handover
    both = {**held, "date": "3 August 2027"}
    assert {"confirm", "human", "cancel"} <= set(moves("2 of us in economy", both, at="ask_count"))
    picked = moves("2 of us in economy", both, at="ask_count", pick=True)
    assert "confirm" in picked and not {"human", "cancel", "ask_count"} & set(picked)
    assert "human" in moves("can I talk to a person?", both, at="ask_count", pick=True)  # no answer: every move


def test_a_message_that_is_little_but_a_value_for_the_asked_slot_moves_on(trained, mini_workflow):
    """``values_alone_move_on``: "porto" or "quito please" answering "where would you like to fly?"
    (or opening the conversation, with ``first_message_answers``) cannot keep the step; a long message with one stray word ("it's about my trip, sorry"), a
    value that is not shaped like the slot's declared values, or a held slot can."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.candidates import shaped_like
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled
    from subterra.workflow import Slot

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))

    def moves(message, held=None, on=True, at="greet", first=False):
        rules = replace(NO_RULES, moves_need_values=True, answers_move_on=True, values_alone_move_on=on,
                        first_message_answers=first)
        return moves_offered(codec, offered_values(codec, message, held), held, at, rules, message)

    for message in ("porto", "quito please", "Cape Town!"):
        assert "greet" not in moves(message) and "ask_date" in moves(message), message
        assert "greet" in moves(message, on=False), message
        # the first message of a conversation answers the start step's question
        assert "greet" in moves(message, at=None) and "greet" not in moves(message, at=None, first=True), message
    assert "greet" in moves("it's about my trip, sorry, what do you need from me")
    assert "greet" in moves("porto", {"destination": "Porto"})  # held: a repeat may keep the step
    miles = Slot(name="miles", type="string", values=("SKY-482913", "SKY-107254"))
    assert shaped_like(miles, "sky-120845") and not shaped_like(miles, "transaction refused")
    mail = Slot(name="email", type="string", values=("ana@mail.it",))
    assert shaped_like(mail, "bo@x.io") and not shaped_like(mail, "bereavement")
    city = Slot(name="city", type="string", values=("Cape Town", "Oslo"))
    assert shaped_like(city, "dublin ireland") and not shaped_like(city, "not sure where we want to go")


def test_words_said_for_one_branch_only_move_along_that_branch(trained, mini_workflow):
    """``branch_words``: "forget it all" at the count step says a word only the give-up branch's
    training lines say: the form may only cancel. A question keeps the step too (an aside), and a
    message that answers the step's question is left to the answer rules."""
    from subterra.lexicon import FUNCTION_WORDS, NAME_WORDS, load_lexicon, whole_runs
    from subterra.runtime.branch_words import branch_words, pointed_branch
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled

    words_of = branch_words(mini_workflow, FUNCTION_WORDS | NAME_WORDS)
    assert "human" in words_of["ask_count"]["human"] and "forget" in words_of["ask_count"]["cancel"]
    assert not words_of["ask_count"]["human"] & words_of["ask_count"]["cancel"]
    assert "greet" not in words_of  # one way on: no decision
    assert pointed_branch(words_of, "ask_count", "ok forget it all") == "cancel"
    assert pointed_branch(words_of, "ask_count", "forget it, get me a human") is None  # two branches named
    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    held = {"destination": "Lisbon", "date": "3 August 2027"}

    def moves(message, on=True):
        rules = replace(NO_RULES, moves_need_values=True, branch_words=on)
        return moves_offered(codec, offered_values(codec, message, held), held, "ask_count", rules, message)

    assert set(moves("ok forget it all")) == {"cancel"}
    assert {"ask_count", "human"} <= set(moves("ok forget it all", on=False))
    assert set(moves("forget it? can I still change the date")) == {"ask_count", "cancel"}  # a question: an aside
    assert "confirm" in moves("forget economy, 2 of us in business")  # an answer: the branch words stand aside


def test_a_yes_or_a_no_however_said_points_at_the_branch_whose_lines_say_it():
    """``yes_no_words``: at the confirmation, only the confirming branch's lines say yes ("Yes,
    confirm.") and only the declining one's say no: "yep, book it" confirms and "nah" declines,
    though "book" is said for both; "not sure", a yes and a no together, and a filler "okay" say
    neither."""
    from subterra.lexicon import FUNCTION_WORDS, NAME_WORDS
    from subterra.runtime.branch_words import SAYS_NO, SAYS_YES, branch_words, pointed_branch, yes_no
    from subterra.workflow import load_workflow

    assert yes_no("Yep, book those") == {SAYS_YES} and yes_no("nah, too much") == {SAYS_NO}
    assert yes_no("not sure yet") == set() and yes_no("yes... well no") == set()
    assert yes_no("Okay, I'll think about it") == set() and yes_no("isn't fine") == set()
    wf = load_workflow(Path(__file__).parent / "fixtures" / "mini_booking.yaml")
    plain = branch_words(wf, FUNCTION_WORDS | NAME_WORDS)
    words_of = branch_words(wf, FUNCTION_WORDS | NAME_WORDS, answers=True)
    assert SAYS_YES in words_of["confirm"]["done"] and SAYS_NO in words_of["confirm"]["cancel"]
    assert pointed_branch(words_of, "confirm", "yep, book it", answers=True) == "done"
    assert pointed_branch(words_of, "confirm", "nah", answers=True) == "cancel"
    assert pointed_branch(words_of, "confirm", "not sure, book it?", answers=True) is None
    assert pointed_branch(plain, "confirm", "yep, book it") is None  # without the rule: "book" is said for both


def test_a_form_holds_only_what_its_move_collects_or_a_named_correction(trained, mini_workflow):
    """``only_asked_values``: handing over to a person holds no value, whatever the message
    offers; keeping a step may fill what the step asks for and refill a held slot whose value the
    message names, never another held one."""
    import copy

    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.lockstep import Lockstep
    from subterra.runtime.turns import TurnCounter, fill_form
    from subterra.student import load_compiled

    tokenizer, model = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    driver = Lockstep(model, codec.banned_in_say, codec.masks, max_draft=0)
    held = {"destination": "Lisbon", "date": "3 August 2027"}
    forms = {}
    for to, message in (("human", "get me an agent, I hate typing Oslo"), ("ask_count", "not Lisbon, Oslo")):
        moving = copy.copy(codec)  # the model's node choice made for it: the move under test
        moving.node_candidates = {to: codec.node_candidates[to]}

        def program(to=to, message=message, moving=moving):
            form, _raw, _valid = yield from fill_form(moving, message, 8, TurnCounter(), held, at="ask_count",
                                                      rules=replace(NO_RULES, only_asked_values=True))
            forms[to] = form

        driver.run([program()], 512)
    assert forms["human"].slots == {}
    # kept at the count step: what the step asks for, or the named correction; never the held date it does not name
    assert set(forms["ask_count"].slots) <= {"destination", "travellers", "cabin"}


def test_a_choice_the_next_step_asks_for_is_held_only_when_named(trained, mini_workflow):
    """``ahead_choices_named``: moving on to a step that asks for a choice, the form holds none the
    message does not name ("switch plans pls" holds no plan: the student would pick one of all the
    values offered), however the student is inclined; the date the move collects is still held."""
    import copy

    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.lockstep import Lockstep
    from subterra.runtime.turns import TurnCounter, fill_form
    from subterra.student import load_compiled

    tokenizer, model = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    driver = Lockstep(model, codec.banned_in_say, codec.masks, max_draft=0)
    moving = copy.copy(codec)
    moving.node_candidates = {"ask_count": codec.node_candidates["ask_count"]}
    rules = replace(NO_RULES, only_asked_values=True, ahead_choices_named=True, edge_slots=True)
    forms = {}
    for message in ("on 3 August 2027, in a nice cabin", "3 August 2027 and some cabin please", "3 August 2027"):
        def program(message=message):
            form, _raw, _valid = yield from fill_form(moving, message, 8, TurnCounter(), {"destination": "Lisbon"},
                                                      at="ask_date", rules=rules)
            forms[message] = form

        driver.run([program()], 512)
    for message, form in forms.items():
        assert "cabin" not in form.slots, (message, form)
        assert "date" in form.slots, (message, form)


def test_a_move_goes_only_where_the_procedure_can_go_from_here(trained, mini_workflow):
    """``moves_on_the_graph``: whatever the message offers, the moves offered from a step are steps
    the procedure can still reach from it (itself included): at the confirmation, "Lisbon, 3 of us"
    is never the greeting's or the count's step again; without the rule every step may be offered."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    held = {"destination": "Oslo", "date": "3 August 2027", "travellers": "2", "cabin": "economy"}
    for message in ("Lisbon, 3 of us", "hmm", "can I talk to a person?", "Oslo"):
        offered = offered_values(codec, message, held)
        on = set(moves_offered(codec, offered, held, "confirm", replace(NO_RULES, moves_on_the_graph=True), message))
        assert on and on <= {"confirm", "done", "cancel"}, (message, on)
    off = set(moves_offered(codec, offered_values(codec, "hmm", held), held, "confirm", NO_RULES, "hmm"))
    assert off == set(mini_workflow.nodes)


def test_a_say_is_a_line_the_model_was_taught_at_the_step_it_chose(trained, mini_workflow):
    """``say_from_lines``: whatever the model, the say is one of the chosen step's own lines whose
    placeholders the form holds, opened as the teacher opens one, never another step's line; a
    correction's opening ("Thanks, updated to Oslo.") names only a held value the form puts right, never
    one given for the first time ("Lisbon please"); an off-script reply's opening ("Let me rephrase.")
    only on a say asking its step again (``rephrase_stays``). Without the rule the say is written freely."""
    from subterra.phrasing import AGENT_OFF_TOPIC, AGENT_UNCLEAR, fill, placeholders
    from subterra.runtime.chat import ChatSession
    from subterra.runtime.encoding import ReadingRules
    from subterra.runtime.turns import corrected_slots

    assert corrected_slots({"destination": "Lisbon"}, {}) == () == corrected_slots({"destination": "Lisbon"}, None)
    assert corrected_slots({"destination": "Oslo", "date": "3 August 2027"}, {"destination": "Lisbon"}) == ("destination",)
    assert corrected_slots({"destination": "Lisbon"}, {"destination": "Lisbon"}) == ()  # said again: nothing put right
    messages = ["hello", "Lisbon please", "the 3rd of August", "no wait, Oslo not Lisbon", "2 of us in economy", "yes"]
    chat = ChatSession(trained[1].model_dir, mini_workflow, max_say_tokens=12)
    at = None
    for message in messages:
        held = dict(chat.held)
        form = chat.respond(message)
        if form.node != at:  # a say that moves on never rephrases
            assert not form.say.startswith((*AGENT_UNCLEAR, *AGENT_OFF_TOPIC)), (message, form)
        at = form.node
        corrected = corrected_slots(form.slots, held)
        if not corrected:  # a value given for the first time, or none: no correction's opening
            assert not any(w in form.say for w in ("changed that to", "updated to", " it is.")), (message, form)
        taught = [t for t in chat.codec.say_lines(form.node, corrected) if set(placeholders(t)) <= set(chat.held)]
        assert form.say in {fill(t, chat.held) for t in taught}, (message, form)  # shown filled in
        assert any(form.say.endswith(fill(line, chat.held)) for line in mini_workflow.nodes[form.node].say), form
        if chat.ended:
            break
    codec = chat.codec
    assert "Okay, I cancelled it." in codec.say_lines("cancel") and "Great. Okay, I cancelled it." in codec.say_lines("cancel")
    assert not any("{destination}" in line for line in codec.say_lines("cancel"))  # nothing corrected
    assert "Let me rephrase. Okay, I cancelled it." in codec.say_lines("cancel")
    assert not any(line.startswith((*AGENT_UNCLEAR, *AGENT_OFF_TOPIC)) for line in codec.say_lines("cancel", (), False))
    assert any(line.startswith("Got it, I have changed that to {destination}.") for line in codec.say_lines("cancel", ("destination",)))
    free = ChatSession(trained[1].model_dir, mini_workflow, max_say_tokens=12, rules=ReadingRules(say_from_lines=False))
    assert free.respond("hello").say  # written token by token (this few-step model writes no known line)


def test_an_enum_value_the_message_names_is_the_only_choice_and_an_answer(trained, mini_workflow):
    """``named_choices``: "2 of us in business" offers the cabin only "business" (the model never picks
    another declared value the message does not say); naming one answers the step that asks for it
    ("business please" leaves the count step for the confirmation), and an enum not named is no
    value a move can count on ("not sure yet" cannot confirm). A span naming an enum's value is no
    text slot's value ("business class" is no destination)."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.candidates import named_choices
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled

    drinks = ("latte", "chai latte", "flat white", "semi-skimmed")
    assert named_choices(drinks, "a latte and a CHAI LATTE") == ("latte", "chai latte")
    assert named_choices(drinks, "one chai latte") == ("chai latte",)  # the longer value, not the one inside it
    assert named_choices(drinks, "two flat-whites, semi skimmed") == ("flat white", "semi-skimmed")
    assert named_choices(drinks, "something chocolatey") == ()
    assert named_choices(("morning", "afternoon"), "Good morning! the afternoon suits me") == ("afternoon",)

    tokenizer, _ = load_compiled(trained[1].model_dir)
    lexicon, runs = load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir)
    named = Codec(tokenizer, mini_workflow, lexicon, runs, ReadingRules())
    unnamed = Codec(tokenizer, mini_workflow, lexicon, runs, replace(ReadingRules(), named_choices=False))
    assert list(named.value_candidates("cabin", "2 of us in business")[0]) == ["business"]
    assert set(unnamed.value_candidates("cabin", "2 of us in business")[0]) == {"economy", "business"}
    assert set(named.value_candidates("cabin", "2 of us, whichever is cheaper")[0]) == {"economy", "business"}
    assert not any("business" in v for v in named.value_candidates("destination", "business class to Oslo")[0])
    assert "Oslo" in named.value_candidates("destination", "business class to Oslo")[0]

    held = {"destination": "Lisbon", "date": "3 August 2027", "travellers": "2"}

    def moves(codec, message):
        rules = replace(NO_RULES, moves_need_values=True, answers_move_on=True, answers_pick_moves=True,
                        named_choices=codec.named_choices)
        return set(moves_offered(codec, offered_values(codec, message, held), held, "ask_count", rules, message))

    assert moves(named, "business please") == {"confirm"}
    assert "ask_count" in moves(unnamed, "business please")
    assert "confirm" not in moves(named, "hmm, not sure yet") and "confirm" in moves(unnamed, "hmm, not sure yet")


def test_a_name_written_capitalised_leaves_out_the_lower_case_words_around_it():
    """``names_by_case``: for a slot of proper names, "I'm booking for my mother, Marisol Vega" offers
    the name, never "mother"; a message in lower case throughout keeps its words ("warsaw"), and an
    id keeps its digits whatever its case."""
    from subterra.runtime.candidates import capitalised_values, mid_sentence, written_as_names
    from subterra.workflow import Slot

    assert capitalised_values(Slot(name="patient", values=("Marisol Vega", "Lotte de Vries")))
    assert not capitalised_values(Slot(name="device", values=("laptop", "Meeting kiosk")))
    assert written_as_names("I'm booking for my mother, Marisol Vega.", ["mother", "Marisol Vega"]) == ["Marisol Vega"]
    assert written_as_names("hi, hope you're well. warsaw", ["hope", "warsaw"]) == ["hope", "warsaw"]
    assert written_as_names("Paris. or maybe lyon", ["Paris", "lyon"]) == ["Paris", "lyon"]  # a sentence's first word
    assert written_as_names("it's ab-2041 for Dana Reyes", ["ab-2041", "Dana Reyes"]) == ["ab-2041", "Dana Reyes"]
    # ``cased_messages``: a message that starts with a capital writes its names so ("lost" is no city)
    assert written_as_names("Sorry, lost you there.", ["lost"], cased=True) == []
    assert written_as_names("Sorry, lost you there.", ["lost"]) == ["lost"]
    assert written_as_names("I fly from boston", ["boston"], cased=True) == ["boston"]  # "I" is no sentence case
    assert written_as_names("sorry one sec, my kid is yelling", ["yelling"], cased=True) == ["yelling"]
    # a name of two capitalised words is one where its first word starts a sentence, too ("Krüger" starts none)
    assert written_as_names("morning. Tobias Krüger. need help", ["Tobias Krüger", "need help"]) == ["Tobias Krüger"]
    assert mid_sentence("morning. Tobias Krüger. need help", "Tobias Krüger")
    assert not mid_sentence("Sorry. Paris please", "Paris") and not mid_sentence("Quick question", "Quick")


def test_a_procedure_words_plural_or_singular_is_one_too(mini_workflow):
    """``inflected_words``: where users said "flight" and "tickets" around values, "flights" and
    "ticket" cut a run too ("flights to athens": "athens", never "flights"), but no word of a declared
    value becomes a procedure word ("Lima" stays a value where "lim" is one)."""
    from subterra.lexicon import inflected
    from subterra.runtime.candidates import value_spans

    lexicon = inflected(frozenset({"flight", "tickets", "lim", "to", "in"}), mini_workflow)
    assert {"flights", "ticket", "flight", "tickets"} <= lexicon and "lima" not in lexicon
    assert not {"busines", "statu", "thi"} & inflected(frozenset({"business", "status", "this"}), mini_workflow)
    assert value_spans("morning! flights to athens in july?", lexicon) == ["morning", "athens", "july"]
    assert "flights" in value_spans("morning! flights to athens in july?", frozenset({"flight", "to", "in"}))


def test_a_declared_value_said_word_for_word_is_offered_whole(trained, mini_workflow):
    """``said_values``: a declared value holding frame words and digits ("in 10 minutes": "in" is a
    frame word, which cuts the run) is offered whole when the message says it, in the message's case;
    the frame cut stays for everything else."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.candidates import said_values
    from subterra.student import load_compiled
    from subterra.workflow import parse_workflow_text

    assert said_values(["in 10 minutes", "at 7:30", "as soon as possible"], "IN 10 minutes, or at 7:30!") == ["IN 10 minutes", "at 7:30"]
    assert said_values(["Cape Town"], "to cape-town please") == ["cape-town"]
    assert said_values(["in 10 minutes"], "in 100 minutes") == []  # whole words only

    text = (Path(__file__).parent / "fixtures" / "mini_booking.yaml").read_text()
    wf = parse_workflow_text(text.replace("values: [Lisbon,", "values: [in 10 minutes, Lisbon,", 1), "mini_booking.yaml")
    tokenizer, _ = load_compiled(trained[1].model_dir)
    lexicon, runs = load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir)
    said = Codec(tokenizer, wf, lexicon, runs, ReadingRules())
    cut = Codec(tokenizer, wf, lexicon, runs, replace(ReadingRules(), said_values=False))
    assert "in 10 minutes" in said.value_candidates("destination", "I'll be there in 10 minutes")[0]
    assert "in 10 minutes" not in cut.value_candidates("destination", "I'll be there in 10 minutes")[0]
    assert "Oslo" in said.value_candidates("destination", "in 10 minutes, Oslo")[0]


def _two_cities_and_a_passenger():
    """The mini workflow asking for the origin beside the destination, and the lead passenger at the
    confirmation: two text slots one message may fill, and a name further on."""
    from subterra.workflow import parse_workflow_text

    text = (Path(__file__).parent / "fixtures" / "mini_booking.yaml").read_text()
    text = text.replace("  cabin: {type: enum, values: [economy, business]}\n",
                        "  cabin: {type: enum, values: [economy, business]}\n"
                        "  origin: {description: city of departure, values: [Porto, Rome, Kyiv]}\n"
                        "  passenger: {description: lead passenger, values: [Ana Ruiz, Bo Lee]}\n")
    text = text.replace("    collect: [destination]\n", "    collect: [destination, origin]\n", 1)
    text = text.replace("    prompt: Ask for confirmation.\n", "    prompt: Ask for confirmation.\n    collect: [passenger]\n", 1)
    return parse_workflow_text(text, "mini_booking.yaml")


def test_a_first_message_answering_several_steps_moves_past_them_with_one_span_per_slot(trained):
    """``values_carry_on``: "Porto to Lisbon on 3 August 2027, 2 of us in business" answers the
    greeting's, the date's and the count's questions: the form goes to the confirmation, and with
    ``spans_once`` holds each city once ("Lisbon" never both origin and destination). A message
    answering one step only, or giving a city in lower case where names are capitalised, carries
    nothing; and ``names_ahead_capitalised``: a lower-case word is no name a move further on counts
    on ("booking for kids" cannot pass the confirmation's question about the passenger)."""
    import datetime as dt

    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.lockstep import Lockstep
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import TurnCounter, fill_form, moves_offered
    from subterra.student import load_compiled

    wf = _two_cities_and_a_passenger()
    model_dir = trained[1].model_dir
    tokenizer, model = load_compiled(model_dir)
    codec = Codec(tokenizer, wf, load_lexicon(model_dir), whole_runs(model_dir))
    today = dt.date(2027, 3, 1)

    def moves(message, at=None, held=None, **rules):
        chosen = replace(ReadingRules(), **rules)
        return set(moves_offered(codec, offered_values(codec, message, held, today), held, at, chosen, message))

    request = "Hi, Porto to Lisbon on 3 August 2027, 2 of us in business"
    assert moves(request) == {"confirm"}
    assert moves(request, values_carry_on=False) != {"confirm"}
    assert moves("hi, porto to lisbon, 3 August 2027, 2 of us in business") != {"confirm"}  # no city written as one
    assert moves("Porto to Lisbon on 3 August 2027, 2 of us in business") != {"confirm"}  # nor where a sentence starts
    assert moves("Hi, Porto to Lisbon please") != {"confirm"} and "ask_count" not in moves("Hi, Porto to Lisbon please")
    held = {"destination": "Lisbon", "origin": "Porto", "date": "3 August 2027"}
    assert "done" in moves("2 of us in business, booking for kids", "ask_count", held, names_ahead_capitalised=False)
    assert "done" not in moves("2 of us in business, booking for kids", "ask_count", held)
    assert "done" in moves("2 of us in business, booking for Ana Ruiz", "ask_count", held)

    forms = {}
    for once in (True, False):
        def program(once=once):
            rules = replace(ReadingRules(), spans_once=once)
            form, _raw, _valid = yield from fill_form(codec, request, 8, TurnCounter(), {}, today=today, rules=rules)
            forms[once] = form

        Lockstep(model, codec.banned_in_say, codec.masks, max_draft=0).run([program()], 512)
    assert forms[True].node == "confirm"
    assert {forms[True].slots["origin"], forms[True].slots["destination"]} == {"Porto", "Lisbon"}


def test_a_count_beyond_the_asked_slots_range_answers_the_step(trained, mini_workflow):
    """``out_of_range_answers``: "about 25 of us" where a booking takes at most 9 answers the count
    question all the same: the step is not kept, and no move that collects the count is offered (the
    person, the cancellation remain); a count in range is left to the other rules."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    held = {"destination": "Lisbon", "date": "3 August 2027"}

    def moves(message, on=True):
        rules = replace(ReadingRules(), out_of_range_answers=on)
        return set(moves_offered(codec, offered_values(codec, message, held), held, "ask_count", rules, message))

    assert "ask_count" not in moves("umm about 25 of us, a choir") and "confirm" not in moves("umm about 25 of us, a choir")
    assert "human" in moves("umm about 25 of us, a choir")
    assert "ask_count" in moves("umm about 25 of us, a choir", on=False)


def test_a_count_is_never_a_dates_day_nor_a_span_of_time_in_another_unit(trained, mini_workflow):
    """``counts_as_said``: "6 September, just for me" offers a party of 1, never 6; "3 hours flying"
    and "one sec" are no party size, but a slot counting hours takes "delayed 8 hours"; "just the one
    passenger" is one, "book the one on 18 July" none."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.offers import offered_values
    from subterra.student import load_compiled
    from subterra.typed_values import counts

    assert counts("nah that's a lot for 3 hours flying. no thanks", "number of people flying") == ()
    assert counts("sorry one sec, my kid is yelling", "number of people flying") == ()
    assert counts("back in 5 minutes") == ("5",)  # no wording: every number said
    assert counts("it was delayed 8 hours", "hours the flight was delayed") == ("8",)
    assert counts("we need 2 nights", "nights of temporary accommodation") == ("2",)
    assert counts("just the one passenger") == ("1",) and counts("book the one on 18 July") == ()
    assert counts("light one, we only have backpacks") == () and counts("only one, thanks") == ("1",)
    assert counts("for 3 people that's steep", "checked bags added with the bag fare") == ()  # people, not bags
    assert counts("for 3 people that's steep", "number of people flying") == ("3",)

    tokenizer, _ = load_compiled(trained[1].model_dir)

    def travellers(message, on=True):
        rules = replace(ReadingRules(), counts_as_said=on)
        codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir), rules)
        return set(offered_values(codec, message).get("travellers", ({}, None))[0])

    assert travellers("Lisbon on 6 September, just for me") == {"1"}
    assert "6" in travellers("Lisbon on 6 September, just for me", on=False)
    assert travellers("it's 3 hours flying, 2 of us") == {"2"}


def test_a_value_for_a_later_step_is_held_and_its_question_passed(trained, mini_workflow):
    """``values_held_ahead``: "Hi, 2 tickets to Lisbon please" at the greeting moves to the date
    question holding the party of 2 for the count question further on; ``held_steps_pass``: then
    a date carries the conversation past the count question when the cabin is held too, a step
    that lies on no loop; without the rules the party is not held and the count is asked."""
    import datetime as dt

    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.lockstep import Lockstep
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import TurnCounter, fill_form, moves_offered
    from subterra.student import load_compiled

    model_dir = trained[1].model_dir
    tokenizer, model = load_compiled(model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(model_dir), whole_runs(model_dir))
    today = dt.date(2027, 3, 1)

    forms = {}
    for on in (True, False):
        def program(on=on):
            rules = replace(ReadingRules(), values_held_ahead=on)
            form, _raw, _valid = yield from fill_form(codec, "Hi, 2 tickets to Lisbon in business please", 8,
                                                      TurnCounter(), {}, today=today, rules=rules)
            forms[on] = form

        Lockstep(model, codec.banned_in_say, codec.masks, max_draft=0).run([program()], 512)
    assert forms[True].slots.get("travellers") == "2" and forms[True].slots.get("cabin") == "business"
    assert forms[True].slots.get("destination") == "Lisbon" and forms[True].node == "ask_date"
    assert "travellers" not in forms[False].slots

    held = {"destination": "Lisbon", "travellers": "2", "cabin": "business"}

    def moves(message, **rules):
        chosen = replace(ReadingRules(), **rules)
        return set(moves_offered(codec, offered_values(codec, message, held, today), held, "ask_date", chosen, message))

    assert moves("the 3rd of August") == {"confirm"}
    assert "confirm" not in moves("the 3rd of August", held_steps_pass=False)


def test_a_decision_after_an_answered_step_is_passed_when_the_message_names_its_branch(trained, mini_workflow):
    """``carry_into_branches``: "3 August 2027, but I want a human" at the date question answers
    it and points at the count question's branch to a person: the form goes there; without the rule,
    one answered step carries nothing. ``first_names_answer``: a first message naming the
    destination as a name ("can you get me to Lisbon") answers the greeting."""
    import datetime as dt

    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    today = dt.date(2027, 3, 1)

    def moves(message, at=None, held=None, **rules):
        chosen = replace(ReadingRules(), **rules)
        return set(moves_offered(codec, offered_values(codec, message, held, today), held, at, chosen, message))

    held = {"destination": "Lisbon"}
    assert moves("3 August 2027, but I want a human", "ask_date", held) == {"human"}
    assert moves("3 August 2027, but I want a human", "ask_date", held, carry_into_branches=False) != {"human"}
    assert "greet" not in moves("can you get me to Lisbon")
    assert "greet" in moves("can you get me to Lisbon", first_names_answer=False)
    assert "greet" in moves("hi can you help me")


def test_a_days_name_alone_is_no_city_and_a_say_never_opens_twice():
    """A pool of words takes no day said by its name ("july", "in july", "tomorrow", "Sundays"), nor a
    pleasantry ("hope"); a teacher's
    opening that starts as the step's line does ("Great." before "Great choice.") is left out."""
    from subterra.runtime.candidates import fits_type
    from subterra.teacher import opened
    from subterra.workflow import Slot

    city = Slot("destination", "string", "", ("Athens", "Cape Town"))
    assert not fits_type(city, "july") and not fits_type(city, "in july") and not fits_type(city, "tomorrow")
    assert fits_type(city, "athens") and fits_type(city, "Marchmont") and not fits_type(city, "Sundays")
    postcode = Slot("postcode", "string", "", ("EX2 5DW", "LS6 3QW"))
    assert not fits_type(postcode, "27 September 1983") and fits_type(postcode, "EX4 4QJ")  # no date as a postcode
    assert courtesy_only("hope") and not courtesy_only("Hope Street")  # "Hi, hope you're well." names no city
    assert opened("Great.", "Great choice. Where from?") == "Great choice. Where from?"
    assert opened("Thanks.", "Great choice.") == "Thanks. Great choice." and opened("", "Hi!") == "Hi!"


def test_words_of_a_branch_win_over_a_lower_case_word_where_names_are_capitalised(trained):
    """``branch_over_lower_names``: "is there an actual human around?" at a greeting that asks for
    the destination, or hands over to a person, goes to the person (or stays, a question): "actual" is no city where the
    cities are written capitalised; a city written as one ("Lisbon, or a human?") still counts."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled
    from subterra.workflow import parse_workflow_text

    text = (Path(__file__).parent / "fixtures" / "mini_booking.yaml").read_text()
    greet = "    collect: [destination]\n    user: [\"I'd like to go to {destination}.\""
    assert greet in text
    head, rest = text.split(greet, 1)
    rest = rest.split("\n    next: ask_date\n", 1)[1]
    text = head + (
        "    branches:\n"
        "      - {to: ask_date, when: names a city, collect: [destination], user: [\"I'd like to go to {destination}.\", \"{destination}, please.\"]}\n"
        "      - {to: human, when: wants a person, user: [\"Can I talk to a human?\", \"A human agent, please.\"]}\n") + rest
    wf = parse_workflow_text(text, "mini_booking.yaml")
    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, wf, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))

    def moves(message, **rules):
        chosen = replace(ReadingRules(), **rules)
        return set(moves_offered(codec, offered_values(codec, message, {}), {}, "greet", chosen, message))

    assert "human" in moves("is there an actual human around?") and "ask_date" not in moves("is there an actual human around?")
    assert "ask_date" in moves("is there an actual human around?", branch_over_lower_names=False)
    assert "ask_date" in moves("I want Lisbon, or is there a human?")


def test_a_question_takes_a_branch_only_where_its_lines_ask_one_too(trained, mini_workflow):
    """``questions_point``: at the count question, "do you have a person I could talk to?" goes to
    the person (its lines ask "Can I talk to a person?": with ``questions_choose`` such a question
    chooses the branch, without it the step is kept beside it; "Are you a real person?", which says
    only what training's off-script lines say, keeps it beside too), while "would it be silly to forget
    it?" names the cancellation, whose lines never ask, and keeps the step: a question about a branch
    is no choice of it. Without the rule both keep the step beside the branch."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.branch_words import asked_with_question
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled

    assert asked_with_question(mini_workflow, "ask_count", "human")
    assert not asked_with_question(mini_workflow, "ask_count", "cancel")
    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    held = {"destination": "Lisbon", "date": "3 August 2027"}

    def moves(message, **rules):
        chosen = replace(ReadingRules(), **rules)
        return set(moves_offered(codec, offered_values(codec, message, held), held, "ask_count", chosen, message))

    assert moves("do you have a person I could talk to?") == {"human"}
    assert moves("do you have a person I could talk to?", questions_choose=False) == {"human", "ask_count"}
    assert moves("Are you a real person?") == {"human", "ask_count"}  # an off-script line training answers at the step
    assert moves("would it be silly to forget it?") == {"ask_count"}
    assert moves("would it be silly to forget it?", questions_point=False) == {"ask_count", "cancel"}
    assert moves("forget it") == {"cancel"}


def test_a_held_value_said_again_corrects_nothing_and_an_answer_is_held_where_the_move_may_take_it(trained, mini_workflow):
    """``restated_values``: "for 3 people that's steep" with a party of 3 held names the held value
    and offers no other: no correction (the form does not refill it); "not 2, 3 of us" is one.
    ``answers_fill``: where two ways lead on and only one collects the count ("3 of us" or "not sure
    yet"), a count the message gives is held on the move."""
    import datetime as dt

    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.lockstep import Lockstep
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import TurnCounter, _corrected, fill_form
    from subterra.student import load_compiled
    from subterra.workflow import parse_workflow_text

    tokenizer, model = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    for message, held, corrected in (("for 3 people that's steep", {"travellers": "3"}, set()),
                                     ("not 2, 3 of us", {"travellers": "2"}, {"travellers"})):
        assert _corrected(message, held, offered_values(codec, message, held)) == corrected

    text = (Path(__file__).parent / "fixtures" / "mini_booking.yaml").read_text()
    count = '      - {to: confirm, when: gives count and cabin, collect: [travellers, cabin],'
    assert count in text
    head, rest = text.split(count, 1)
    rest = rest.split("\n", 1)[1]
    text = head + ('      - {to: confirm, when: gives the count, collect: [travellers], user: ["{travellers} of us.", "We are {travellers}."]}\n'
                   '      - {to: confirm, when: is not sure, user: ["Not sure yet.", "Whatever works."]}\n') + rest
    wf = parse_workflow_text(text, "mini_booking.yaml")
    codec = Codec(tokenizer, wf, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    held = {"destination": "Lisbon", "date": "3 August 2027"}
    forms = {}

    def program():
        form, _raw, _valid = yield from fill_form(codec, "hmm, just 3 of us I think", 8, TurnCounter(), held,
                                                  today=dt.date(2027, 3, 1), at="ask_count", rules=ReadingRules())
        forms["on"] = form

    Lockstep(model, codec.banned_in_say, codec.masks, max_draft=0).run([program()], 512)
    assert forms["on"].slots.get("travellers") == "3"


HELP_DESK = """
workflow: help_desk
title: Help desk
assistant: You are Vidly's support assistant.
start: triage
nodes:
  triage:
    prompt: Ask what the problem is.
    say: ["What can I help with?"]
    branches:
      - to: calls
        when: has a problem in meetings
        user: ["Nobody hears me in meetings.", "My camera is black in meetings.", "Meetings keep freezing.",
               "The echo in meetings is awful.", "My microphone fails in meetings.", "Sound drops in meetings."]
      - to: recording
        when: cannot find or play a recording
        user: ["Where is my meeting recording?", "The recording won't play.", "My recording is gone.",
               "I lost a meeting recording.", "The recording button is grey.", "How do I find a recording?"]
  calls:
    prompt: Help with calls.
    say: ["Let's fix your call."]
    end: success
  recording:
    prompt: Help with recordings.
    say: ["Let's find your recording."]
    end: success
"""


def test_a_branch_word_is_said_in_any_of_its_forms(tmp_path):
    """``stemmed_words``: "recordings" and "recorded" say the recording branch's "recording"; and its
    stem decides first, so "a problem with recordings of meetings" points there though "meetings" is
    said only for calls (the calls' lines say "meetings", the recording's "meeting": one stem)."""
    from subterra.lexicon import FUNCTION_WORDS, NAME_WORDS
    from subterra.runtime.branch_words import branch_words, pointed_branch
    from subterra.workflow import load_workflow

    path = tmp_path / "help_desk.yaml"
    path.write_text(HELP_DESK)
    wf = load_workflow(path)
    plain = branch_words(wf, FUNCTION_WORDS | NAME_WORDS)
    stemmed = branch_words(wf, FUNCTION_WORDS | NAME_WORDS, stems=True)
    for message in ("I recorded a call and it's missing", "question about my recordings"):
        assert pointed_branch(plain, "triage", message) is None
        assert pointed_branch(stemmed, "triage", message, stems=True) == "recording"
    assert pointed_branch(plain, "triage", "a problem with recordings of meetings") == "calls"
    assert pointed_branch(stemmed, "triage", "a problem with recordings of meetings", stems=True) == "recording"
    assert pointed_branch(stemmed, "triage", "my camera froze", stems=True) == "calls"  # no stem points: the words do
    # a frame word's other form is no branch word either: "texts" (one branch) where "text" is a frame word
    gallery = load_workflow(Path(__file__).parents[1] / "data" / "gallery" / "workflows" / "identity_verification.yaml")
    words_of = branch_words(gallery, FUNCTION_WORDS | NAME_WORDS, answers=True, stems=True)
    assert pointed_branch(words_of, "send_code", "I haven't had any text.", answers=True, stems=True) is None


def test_a_message_putting_a_held_value_right_is_no_answer_that_moves_on(trained, mini_workflow):
    """``corrections_stay``: where a step asks again for a value the conversation holds (a loop's next
    round, a step visited again), "not economy, business" puts the held value right: the step may
    stay, as training's corrections do; naming a new value alone still answers it."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    held = {"destination": "Lisbon", "date": "3 August 2027", "travellers": "2", "cabin": "economy"}

    def moves(message, on=True):
        rules = replace(ReadingRules(), corrections_stay=on)
        return set(moves_offered(codec, offered_values(codec, message, held), held, "ask_count", rules, message))

    assert "ask_count" not in moves("not economy, 2 of us in business", on=False)
    assert "ask_count" in moves("not economy, 2 of us in business")
    assert "ask_count" not in moves("2 of us in business")


def test_a_dash_between_words_is_no_part_of_a_value():
    from subterra.runtime.candidates import value_spans, word_spans

    spans = word_spans("Hello - William Ashford. Got a couple of questions")
    assert "William Ashford" in spans and not any(s.startswith("-") or s.endswith("-") for s in spans)
    assert "Mei Lin Zhou" in word_spans("hi, Mei Lin Zhou - i cant sign in")
    assert not any("Zhou - i" in s for s in word_spans("hi, Mei Lin Zhou - i cant sign in"))
    assert value_spans("evening - Idris Bakare", frozenset({"evening"})) == ["Idris Bakare"]
    assert "INV-390554" in word_spans("it says INV-390554 at the top")  # a dash inside a value stays


def test_a_word_training_puts_before_one_slots_values_says_which_slot_a_span_is_for(trained):
    """``slot_cues``: "to" stands before the destination in travel_booking's training lines (twice or
    more) and before no other slot, "from" before the origin: in "2 tickets Chicago to Havana",
    Havana is offered to the destination only; a word said once so ("thinking of") is no cue, so
    "out of London" still offers London as the origin."""
    from subterra.runtime.cues import slot_cues
    from subterra.student import load_compiled

    wf = load_workflow(Path(__file__).parent.parent / "data" / "workflows" / "travel_booking.yaml")
    cues = slot_cues(wf)
    assert cues["to"] == "destination" and cues["from"] == "origin" and "of" not in cues
    tokenizer, _ = load_compiled(trained[1].model_dir)
    cued = Codec(tokenizer, wf, rules=ReadingRules())
    plain = Codec(tokenizer, wf, rules=replace(ReadingRules(), slot_cues=False))
    message = "hey, 2 tickets Chicago to Havana on August 20th pls"
    assert "Havana" not in cued.value_candidates("origin", message)[0] and "Chicago" in cued.value_candidates("origin", message)[0]
    assert "Havana" in cued.value_candidates("destination", message)[0]
    assert "Havana" in plain.value_candidates("origin", message)[0]
    assert "London" in cued.value_candidates("origin", "out of London")[0]


def test_a_declared_value_said_is_offered_alone_not_inside_a_longer_span(trained):
    """``declared_values_whole``: "Paris CDG" and "dublin ireland" offer the declared city alone, and
    "barcelona (BCN)" not its aside; a city no declared value names keeps its spans ("Porto (OPO)")."""
    from subterra.runtime.candidates import declared_whole
    from subterra.student import load_compiled

    assert declared_whole(["Paris CDG", "Paris"], ["Paris"], "Paris CDG") == ["Paris"]
    assert declared_whole(["barcelona", "BCN"], ["barcelona"], "barcelona (BCN)") == ["barcelona"]
    assert declared_whole(["Porto", "OPO"], [], "Porto (OPO)") == ["Porto", "OPO"]
    from subterra.runtime.candidates import words_apart  # devices share words ("MacBook Air", "MacBook Pro"):
    support = load_workflow(Path(__file__).parent.parent / "data" / "workflows" / "customer_support.yaml")
    assert not words_apart(tuple(support.slots["device"].values))  # "iPad mini" is no "iPad"
    assert words_apart(("Paris", "New York", "Cape Town"))
    wf = load_workflow(Path(__file__).parent.parent / "data" / "workflows" / "travel_booking.yaml")
    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, wf, rules=ReadingRules())
    offered = codec.value_candidates("origin", "dublin ireland")[0]
    assert "dublin" in offered and "dublin ireland" not in offered
    assert "Paris CDG" not in codec.value_candidates("origin", "Paris CDG")[0]
    assert "Paris CDG" in Codec(tokenizer, wf, rules=replace(ReadingRules(), declared_values_whole=False)).value_candidates(
        "origin", "Paris CDG")[0]
    assert "iPad mini" in Codec(tokenizer, support, rules=ReadingRules()).value_candidates("device", "iPad mini")[0]


def test_a_slip_of_the_keyboard_still_points_at_a_branch_and_names_a_choice(trained):
    """``typo_words``: a word of five letters or more that is no known word but one slip from one word of
    a decision's lines or an enum value ("busines", "capuccino") is read as that word to point at a
    branch and name a choice; values are still copied as written, and near words stay apart ("cancer"
    is no "cancel", "while" no "whole")."""
    from subterra.student import load_compiled

    root = Path(__file__).parent.parent / "data"
    tokenizer, _ = load_compiled(trained[1].model_dir)
    coffee = load_workflow(root / "gallery" / "workflows" / "coffee_order.yaml")
    codec = Codec(tokenizer, coffee, rules=ReadingRules())
    assert codec.read_spelled("a large capuccino, semi skimed pls") == "a large cappuccino, semi skimmed pls"
    assert list(codec.value_candidates("drink", "a large capuccino pls")[0]) == ["cappuccino"]
    assert codec.read_spelled("whole milk while I wait") == "whole milk while I wait"
    plain = Codec(tokenizer, coffee, rules=replace(ReadingRules(), typo_words=False))
    assert "cappuccino" in plain.value_candidates("drink", "a large capuccino pls")[0]
    assert len(plain.value_candidates("drink", "a large capuccino pls")[0]) > 1  # no value named: every one offered
    travel = Codec(tokenizer, load_workflow(root / "workflows" / "travel_booking.yaml"), rules=ReadingRules())
    assert travel.read_spelled("ok fine, busines it is") == "ok fine, business it is"
    assert travel.read_spelled("I had cancer last year") == "I had cancer last year"


def test_a_word_said_under_a_negation_points_where_lines_negate_it():
    """``negated_words``: "I'm not allowed to pay" at the payment points where a line says "don't want to
    pay", not where lines pay; "not received it yet" points where a line says "haven't received", and a
    word a line negates still points when said plainly ("spam folder also empty")."""
    from subterra.lexicon import FUNCTION_WORDS, NAME_WORDS
    from subterra.runtime.branch_words import branch_words, marked_words, pointed_branch

    assert marked_words("please don't go ahead with it") == {"please", "don", "t", "¬go", "¬ahead", "¬with", "it"}  # three words
    assert "plan" in marked_words("not now, plan B")  # a clause ends the negation
    root = Path(__file__).parent.parent / "data"
    frame = FUNCTION_WORDS | NAME_WORDS

    def pointed(path: str, step: str, message: str, negations: bool = True) -> str | None:
        wf = load_workflow(root / path)
        return pointed_branch(branch_words(wf, frame, True, True, negations), step, message, True, stems=True,
                              negations=negations)

    travel, finance = "workflows/travel_booking.yaml", "finance says I'm not allowed to pay for it myself"
    assert pointed(travel, "payment", finance) == "cancelled"  # a line of its own: "I don't want to pay ..."
    assert pointed(travel, "payment", finance, negations=False) is None  # "pay" is said for paying and not paying
    assert pointed("gallery/workflows/identity_verification.yaml", "send_code", "not received it yet, sorry") == "resend_code"
    assert pointed("workflows/customer_support.yaml", "login_check", "no mail is coming, spam folder also empty") == "human_agent"


RETRY_FLOW = """\
workflow: code_check
assistant: You are Kestrel Bank's security assistant.
start: send_code
slots:
  code:
    description: the six-digit code sent by text
    values: ["514466", "208731", "993015", "640218"]
nodes:
  send_code:
    prompt: Ask for the code.
    say: ["What is the code we just texted you?"]
    collect: [code]
    user: ["It's {code}.", "{code}.", "The code is {code}.", "Got it: {code}."]
    next: check
  check:
    prompt: Ask whether the code was accepted.
    say: ["Was {code} accepted?"]
    branches:
      - {to: verified, when: the code was accepted, user: ["Yes, accepted.", "Green tick.", "It worked.", "All good."]}
      - {to: retry, when: the code did not match, user: ["It was refused.", "Rejected.", "It refused it.", "Not accepted."]}
  retry:
    prompt: Send a new code and ask for it.
    say: ["I've sent a new code. What is it?"]
    collect: [code]
    user: ["The new one is {code}.", "{code}.", "It's {code}.", "New code: {code}."]
    next: check_again
  check_again:
    prompt: Ask whether the new code was accepted.
    say: ["And was {code} accepted this time?"]
    branches:
      - {to: verified, when: accepted, user: ["Yes.", "Accepted.", "It worked.", "Green tick."]}
      - {to: locked, when: refused again, user: ["No.", "Refused again.", "Rejected.", "Still no."]}
  verified: {prompt: Confirm., say: ["You're verified."], end: success}
  locked: {prompt: Lock., say: ["Your account is locked for now."], end: abandoned}
"""


def test_a_retry_asking_for_a_new_code_is_not_passed_by_the_held_one(trained, tmp_path):
    """A step that asks again for a value a step before it collected (a verification's retry) is
    not answered by the value held, the one that failed: "It was refused" with a code held moves to
    the retry and asks for the new code, never past it; a message giving the new code goes on."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled

    (tmp_path / "code_check.yaml").write_text(RETRY_FLOW)
    wf = load_workflow(tmp_path / "code_check.yaml")
    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, wf, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    rules = replace(ReadingRules(), branch_reader="")
    held = {"code": "514466"}

    def moves(message):
        return set(moves_offered(codec, offered_values(codec, message, held), held, "check", rules, message))

    assert moves("It was refused") == {"retry"}
    assert "check_again" in moves("It was refused, the new one is 208731")


def test_a_code_among_words_answers_a_slot_of_codes(trained, tmp_path):
    """A slot whose declared values are all codes is answered by the one code in a message, whatever
    words stand around it ("ok got it, 208731"), at a retry too, where the code held is the one
    that failed; the held code said again answers nothing, and without ``codes_among_words`` a
    code among more words than it is no answer."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.candidates import coded
    from subterra.runtime.encoding import Codec
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered
    from subterra.student import load_compiled

    (tmp_path / "code_check.yaml").write_text(RETRY_FLOW)
    wf = load_workflow(tmp_path / "code_check.yaml")
    assert coded(wf.slots["code"])
    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, wf, load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir))
    rules = replace(ReadingRules(), branch_reader="")
    held = {"code": "514466"}

    def moves(message, rules=rules):
        return set(moves_offered(codec, offered_values(codec, message, held), held, "retry", rules, message))

    assert moves("ok got it, the new one says 208731 I think") == {"check_again"}
    assert "retry" in moves("ok got it, the new one says 514466 I think")
    assert "retry" in moves("ok got it, the new one says 208731 I think", replace(rules, codes_among_words=False))


def test_a_slot_of_codes_is_offered_codes_only(trained, tmp_path):
    """``codes_whole``: a slot whose declared values are all codes is offered only spans shaped as
    its codes ("final answer 208731": 208731; "pc EC1V 4PW" is a postcode, no SMS code: letters where
    the codes have none); without the rule the whole run is offered, frame and all."""
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.runtime.candidates import code_spans
    from subterra.student import load_compiled

    assert code_spans("yo its Marcus, dob 07/08/1992, pc EC1V 4PW.") == ["07/08/1992", "EC1V 4PW"]
    assert code_spans("final answer 208731!") == ["208731"] and code_spans("no code yet") == []
    from types import SimpleNamespace

    from subterra.runtime.candidates import code_shaped

    orders = SimpleNamespace(values=["ORD-5520931", "ORD-1187340"])
    assert code_shaped(orders, "ORD-9162034") and code_shaped(orders, "ord-9162034")
    assert not code_shaped(orders, "WH-1000XM5") and not code_shaped(orders, "9162034")
    postcodes = SimpleNamespace(values=["LS6 3QW", "M14 5RT"])
    assert code_shaped(postcodes, "W4 5PY") and not code_shaped(postcodes, "8")
    (tmp_path / "code_check.yaml").write_text(RETRY_FLOW)
    wf = load_workflow(tmp_path / "code_check.yaml")
    tokenizer, _ = load_compiled(trained[1].model_dir)
    lexicon, runs = load_lexicon(trained[1].model_dir), whole_runs(trained[1].model_dir)
    codec = Codec(tokenizer, wf, lexicon, runs)
    assert list(codec.value_candidates("code", "final answer 208731")[0]) == ["208731"]
    assert list(codec.value_candidates("code", "my postcode is EC1V 4PW")[0]) == []
    loose = Codec(tokenizer, wf, lexicon, runs, replace(ReadingRules(), codes_whole=False))
    assert "208731" in " ".join(loose.value_candidates("code", "final answer 208731")[0])


def test_a_number_in_a_things_name_is_no_count():
    """A model's number ("Lenovo Yoga Slim 7", "PlayStation 5", "Galaxy Buds2 Pro", "Sony WH-1000XM5")
    is part of a product's name: no photo count nor party size; a count after a city or a greeting
    still counts ("to Lisbon 2 adults", "Hi 2 please")."""
    from subterra.typed_values import counts

    for name in ("it's a Lenovo Yoga Slim 7", "PlayStation 5", "Galaxy Buds2 Pro", "hello, ORD-9162034, Sony WH-1000XM5",
                 "LG OLED C3", "my Pixel 8 won't turn on", "iPhone 15 Pro", "Acer Swift Go 14"):
        assert counts(name) == (), name
    assert counts("I took 3 photos of my Pixel 8") == ("3",)
    for said, count in (("to Lisbon 2 adults", "2"), ("Hi 2 please", "2"), ("Hello 3 tickets to Rome", "3"),
                        ("OK, 4", "4"), ("Oslo 2 people", "2"), ("Table for 4", "4")):
        assert counts(said) == (count,), said



ORDER_FLOW = """\
workflow: cafe
assistant: You are Larkspur Cafe's ordering assistant.
start: check
slots:
  drink: {type: enum, description: the drink, values: [latte, mocha]}
nodes:
  check:
    prompt: Ask whether the code was accepted.
    say: ["Did the app accept your code?"]
    branches:
      - {to: more, when: the code was accepted, user: ["Yes, accepted.", "Yep, green tick.", "It worked."]}
      - {to: stop, when: the code did not match, user: ["It was refused.", "Rejected.", "Red cross."]}
  more:
    prompt: Ask whether they want anything else.
    say: ["Anything else?"]
    branches:
      - {to: check, when: wants another drink, user: ["One more, please.", "Add a {drink} too."], collect: [drink]}
      - {to: done, when: has everything, user: ["That's everything, thanks.", "Complete."]}
      - {to: stop, when: cancels, user: ["Cancel it all.", "Forget it."]}
  done: {prompt: Done., say: ["See you soon."], end: success}
  stop: {prompt: Stop., say: ["Stopped."], end: abandoned}
"""


def test_a_no_points_at_the_other_of_two_branches_and_a_thats_all_where_lines_say_one(tmp_path):
    """``other_answers``: at a check of two branches where only the accepted one's lines say yes, "nah"
    and "computer says no lol" point at the other one; at a decision of three, a no points nowhere.
    ``done_words``: "thats all ta", "nothing else" and "I'm all set" say what "That's everything,
    thanks." says, and point at that branch only. Without the rules, none of them points."""
    from subterra.lexicon import FUNCTION_WORDS, NAME_WORDS
    from subterra.runtime.branch_words import SAYS_DONE, branch_words, finished, pointed_branch

    (tmp_path / "cafe.yaml").write_text(ORDER_FLOW)
    wf = load_workflow(tmp_path / "cafe.yaml")
    frame = FUNCTION_WORDS | NAME_WORDS
    words_of = branch_words(wf, frame, answers=True, other_answer=True, done=True)
    before = branch_words(wf, frame, answers=True)
    for message in ("nah", "computer says no lol", "no good"):
        assert pointed_branch(words_of, "check", message, answers=True) == "stop"
        assert pointed_branch(before, "check", message, answers=True) is None
    assert pointed_branch(words_of, "check", "yes it did", answers=True) == "more"
    assert pointed_branch(words_of, "more", "nah", answers=True) is None  # three branches: a no says nothing
    assert finished("thats all ta") == finished("Nothing else.") == finished("I'm all set") == {SAYS_DONE}
    assert finished("is that it?") == set() and finished("all of it, please") == set()
    for message in ("thats all ta", "nothing else", "I'm all set, thanks"):
        assert pointed_branch(words_of, "more", message, answers=True) == "done"
        assert pointed_branch(before, "more", message, answers=True) is None
