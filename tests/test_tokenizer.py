"""The tiny student's tokenizer: unseen words split into pieces that are no words of the corpus."""

from subterra.tokenizer import CONTINUES, train_tokenizer

TEXTS = [
    "I don't want it, cancel the booking on Monday.",
    "We fly on the 3rd, from Lisbon to Oslo.",
    "Don't book it, I am done.",
] * 20


def test_an_unseen_word_never_spells_itself_with_the_tokens_of_words():
    """A holdout city training never saw ("London") splits into pieces; only its first piece may be
    a word's token, the rest continue it (``##on``, ``##don``): never the "on" and the "don" of
    "don't" the student learnt to read as a cancellation."""
    tok = train_tokenizer(TEXTS, 300)
    words = {tok.convert_ids_to_tokens(tok(w, add_special_tokens=False)["input_ids"])[0]
             for w in ("don", "on", "Oslo", "done", "I")}
    pieces = tok.convert_ids_to_tokens(tok("London", add_special_tokens=False)["input_ids"])
    assert len(pieces) > 1 and all(p.startswith(CONTINUES) for p in pieces[1:])
    assert not set(pieces[1:]) & words
    # a word is the same tokens wherever it stands: copying a value is copying token ids
    alone = tok("London", add_special_tokens=False)["input_ids"]
    inside = tok('I fly from London, "London".', add_special_tokens=False)["input_ids"]
    assert [inside[i:i + len(alone)] == alone for i in range(len(inside))].count(True) == 2


def test_any_text_comes_back_unchanged_whatever_bytes_continue_its_words():
    """Byte-level: nothing is unknown, also inside a word whose bytes training never saw there."""
    tok = train_tokenizer(TEXTS, 300)
    for text in ("Zürich, naïve Œuvre", "a😀b  \n\n tabs\tand ## hashes #x", "São Paulo — 東京", '{"say": "Hi {origin}"}'):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.unk_token_id is None or tok.unk_token_id not in ids


TRAIN_IN_A_FRESH_PROCESS = """
import hashlib, itertools
from subterra.tokenizer import train_tokenizer
cities = ["Lisbon", "Oslo", "Lima", "Quito", "Seoul", "Hanoi", "Perth", "Madrid", "Vienna", "Tokyo", "Nairobi", "Bogota"]
texts = [f"From {a} to {b}, please." for a, b in itertools.permutations(cities, 2)]
tok = train_tokenizer(texts, 400)
print(hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest())
"""


def test_the_same_texts_train_the_same_tokenizer_in_every_process():
    """The trainer created the continuing pieces in hash-map order, a different id per process,
    and broke ties between merges by those ids: the same corpus gave another vocabulary (and the
    same seed another model) every run. Two fresh processes now train the same tokenizer."""
    import subprocess
    import sys

    runs = {subprocess.run([sys.executable, "-c", TRAIN_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(3)}
    assert len(runs) == 1


def test_a_slot_placeholder_is_a_token_of_its_own_not_the_slot_name_that_picks_a_slot(mini_workflow):
    """In a form, ``"destination"`` (the slot a value goes to) and a say line's ``{destination}``
    are different tokens: training new words beside the placeholder never moves the row that
    chooses the slot. Both come back as the text they were."""
    from subterra.tokenizer import placeholder, workflow_atoms

    slot = next(iter(mini_workflow.slots))
    tok = train_tokenizer(TEXTS, 300, workflow_atoms(mini_workflow))
    form = '{"node": "a", "slots": {"%s": "Oslo"}, "say": "Flying to %s, right?"}' % (slot, placeholder(slot))
    ids = tok(form, add_special_tokens=False)["input_ids"]
    name, mark = tok.convert_tokens_to_ids([slot, placeholder(slot)])
    assert ids.count(name) == 1 and ids.count(mark) == 1 and name != mark
    assert tok.decode(ids) == form
