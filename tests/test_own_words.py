"""People's own words: conversations that open with the request, greetings that are never values."""

from subterra.runtime import Codec, courtesy_only


def test_a_greeting_or_a_thanks_is_never_offered_as_a_value(trained, mini_workflow):
    from subterra.lexicon import load_lexicon, whole_runs
    from subterra.student import load_compiled

    assert courtesy_only("hiya!!") and courtesy_only("Good morning") and courtesy_only("hey there")
    assert not courtesy_only("Hi Lisbon") and not courtesy_only("Cape Town") and not courtesy_only("2")
    model_dir = trained[1].model_dir
    tokenizer, _ = load_compiled(model_dir)
    codec = Codec(tokenizer, mini_workflow, load_lexicon(model_dir), whole_runs(model_dir))
    assert codec.value_candidates("destination", "hiya")[0] == {}  # nothing to copy: the form can hold no value
    assert "Porto" in codec.value_candidates("destination", "hi, Porto please")[0]
    lenient = Codec(tokenizer, mini_workflow, load_lexicon(model_dir), whole_runs(model_dir), courtesy_values=True)
    assert "hiya" in lenient.value_candidates("destination", "hiya")[0]
