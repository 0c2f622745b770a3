"""The procedure's own words: learned at compile time from the training conversations.

A word that users said many times in training but never as (part of) a slot value belongs to the
procedure's phrasing ("please", "ticket", "under"), not to a value. The runtime's copy
constraint uses this lexicon to cut a message into runs of other words between such words and
sentence breaks; a value is one whole run (``runtime.candidates.value_spans``). It is a compile artifact saved
beside the weights (``value_lexicon.json``), measured on its own in the evaluation
(``EvalConfig.use_lexicon``, ``copy_runs``: by default the model's own rule, ``whole_runs``); on phrasings training never saw it knows fewer words
and the model decides more alone.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import stopwordsiso

from subterra.forms import parse_form

if TYPE_CHECKING:
    from subterra.workflow import Workflow

LEXICON_FILE = "value_lexicon.json"
WORD = re.compile(r"[^\W_]+", re.UNICODE)
MIN_COUNT = 3


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def build_lexicon(conversations: Iterable[list[dict]], min_count: int = MIN_COUNT) -> list[str]:
    """Words seen at least ``min_count`` times in user messages and never inside a slot value."""
    outside: Counter[str] = Counter()
    inside: set[str] = set()
    for messages in conversations:
        for user, reply in zip(messages, messages[1:]):
            if user["role"] != "user" or reply["role"] != "assistant":
                continue
            values = list(parse_form(reply["content"]).slots.values())
            for v in values:
                inside.update(words(v))
            text = user["content"]
            for v in values:
                text = text.replace(v, " ")
            outside.update(words(text))
    return sorted(w for w, n in outside.items() if n >= min_count and w not in inside)


def save_lexicon(folder: str | Path, lexicon: list[str], whole_runs: bool = True) -> None:
    """``whole_runs``: how the runtime reads a value for this model. A student trained from config
    knows no words beyond its corpus and cannot tell where a value starts ("Starting in Zurich"),
    so a value is a whole run of non-procedure words; a pretrained student picks the edges
    itself among every span that does not start or end with a procedure word ("it should read
    Ada Moreno": a whole run would be "read Ada Moreno")."""
    Path(folder, LEXICON_FILE).write_text(json.dumps({"procedure_words": lexicon, "whole_runs": whole_runs}, indent=0))


def whole_runs(folder: str | Path) -> bool:
    """The model's own copy rule (``save_lexicon``); True for a folder saved before the rule existed."""
    path = Path(folder, LEXICON_FILE)
    return bool(json.loads(path.read_text()).get("whole_runs", True)) if path.exists() else True


def load_lexicon(folder: str | Path) -> frozenset[str]:
    path = Path(folder, LEXICON_FILE)
    if not path.exists():
        return frozenset()
    return frozenset(json.loads(path.read_text())["procedure_words"])


# English words that are a message's frame, never a whole value: pronouns, auxiliaries,
# prepositions, request verbs, fillers and the words of relative time ("next month"), and the
# stopwords-iso English list ("anyone", "somewhere", "thats"). Not "of", "the", "and", "new"
# (inside names: "Isle of Man", "New York"); ``with_function_words`` also keeps out any word of
# the workflow's own declared values.
NAME_WORDS = frozenset({"new", "of", "the", "and"})
FUNCTION_WORDS = frozenset("""
i im me my mine myself we us our you your it its s m re ll ve d t don dont this that these those there here
a an am is are was were be been being do does did doing have has had having will would shall
should can could may might must want wanna wants need needs needed like love looking look trying
try get getting got go going gonna book booking make take find help please pls plz thanks thank
to at for from in into on onto by with without about around via towards toward out off up down
over under after before until than then so but or if just only also too very really actually
maybe perhaps probably hi hello hey hiya yes yeah yep no nope ok okay sure um uh hmm er well oh
ah right sorry hm cheers good morning afternoon evening day night today tonight tomorrow
yesterday week weeks weekend month months year next last soon asap sometime someday some any
what which who whom where when why how
""".split()) | (frozenset(stopwordsiso.stopwords("en")) - NAME_WORDS)


# what an apostrophe leaves of a word ("it's", "I'm", "we're"): a frame whatever values the workflow
# declares ("O'Neill's" among them leaves an "s" too)
CONTRACTIONS = frozenset({"s", "m", "re", "ll", "ve", "d", "t"})


# a declared value made of words ("Cape Town", "O'Neill"), not an address or an id whose pieces
# ("anna@mail.it", "INV-2041") are no words of a name
_WORDS_ONLY = re.compile(r"[^\W\d_]+(?:[\s'’-][^\W\d_]+)*")


def with_function_words(lexicon: frozenset[str], wf: Workflow) -> frozenset[str]:
    """The compile's lexicon and the workflow's frame words (``frame_words``)."""
    return lexicon | frame_words(wf)


def inflected(lexicon: frozenset[str], wf: Workflow) -> frozenset[str]:
    """The compile's lexicon and the plural of each of its words, and the singular of a plural
    ("flights" where users said "flight"; "ticket" where they said "tickets"), less the words of the
    workflow's declared values (a city called "Athens" is not made a procedure word by "athen")."""
    forms = set()
    for w in lexicon:
        if len(w) > 2 and w.isalpha():
            if not w.endswith("s"):
                forms.update((w + "s", w + "es"))
            elif not w.endswith(("ss", "us", "is")):  # "business", "status", "this" are no plurals
                forms.add(w[:-1])
    return lexicon | (frozenset(forms) - _value_words(wf))


def _value_words(wf: Workflow) -> set[str]:
    return {w for slot in wf.slots.values() for v in (slot.values or ()) if _WORDS_ONLY.fullmatch(str(v))
            for w in words(str(v))}


def frame_words(wf: Workflow) -> frozenset[str]:
    """English function words, less every word of the workflow's declared values made of words (a
    workflow with a city called "Hope" keeps "hope" a value word; an e-mail address ending ".it"
    does not keep "it")."""
    return FUNCTION_WORDS - (_value_words(wf) - CONTRACTIONS)
