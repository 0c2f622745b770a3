"""The copy constraint on text (``subterra.runtime.candidates``): the spans of a message a value may
be copied from, and whether a value fits its slot's type."""

from subterra.lexicon import load_lexicon, save_lexicon, whole_runs
from subterra.runtime.candidates import fits_type, value_spans, word_spans
from subterra.workflow import Slot


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


def test_a_model_whose_rule_is_free_spans_picks_a_values_edges_itself(tmp_path):
    """A pretrained student's lexicon says free spans: "it should read Ada Moreno" offers "Ada
    Moreno" (a whole run would force "read Ada Moreno", a word the lexicon never saw)."""
    lexicon = sorted(PROCEDURE | {"it", "should"})
    save_lexicon(tmp_path, lexicon, whole_runs=False)
    assert not whole_runs(tmp_path) and whole_runs(tmp_path / "elsewhere")  # no lexicon file: the old rule
    message = "Um, it should read Ada Moreno."
    assert value_spans(message, load_lexicon(tmp_path)) == ["read Ada Moreno"]
    assert "Ada Moreno" in value_spans(message, load_lexicon(tmp_path), runs_only=whole_runs(tmp_path))


def test_a_value_must_fit_its_slot_type():
    travellers = Slot("travellers", type="integer", min=1, max=6)
    assert fits_type(travellers, "3") and not fits_type(travellers, "9") and not fits_type(travellers, "Omar")
    day = Slot("departure_date", type="date")
    assert fits_type(day, "9 May 2027") and not fits_type(day, "plane")
    assert not fits_type(day, "2027-05-09")  # written as the form writes a day, or offered so by the date parser
    assert fits_type(Slot("amount", type="number"), "123.45") and not fits_type(Slot("amount", type="number"), "lots")
    city = Slot("origin", values=("Lyon", "New York"))
    assert fits_type(city, "Zurich") and not fits_type(city, "3")  # a pool of words takes no bare number
    assert fits_type(Slot("loyalty", values=("SKY-120845",)), "SKY-555") and fits_type(Slot("note"), "42")


def test_a_value_is_shaped_as_the_slots_declared_values_are():
    """Where every declared value has a digit (ids, phone numbers), a value needs one; where every
    one is an e-mail address, a value is one, and where none is, none; a pool of words takes no id."""
    phone = Slot("phone", values=("07700 900123", "+44 20 7946 0958"))
    assert fits_type(phone, "07506 218834") and not fits_type(phone, "h.jennings@talk21.com")
    reference = Slot("booking_ref", values=("CQ9H2F", "AB12CD"))
    assert fits_type(reference, "NB8X3R") and not fits_type(reference, "Eze")
    surname = Slot("passenger_surname", values=("Obi", "Agarwal"))
    assert fits_type(surname, "Eze") and not fits_type(surname, "FM3K8B") and not fits_type(surname, "12")
    email = Slot("email", values=("ana@mail.it", "bo@x.io"))
    assert fits_type(email, "h.jennings@talk21.com") and not fits_type(email, "Henrik Dahl")
    device = Slot("device", values=("MeetWave Room Kit", "Jabra Speak"))
    assert fits_type(device, "Logitech C920")  # a name with a model number in it is still words
