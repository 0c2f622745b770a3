"""The procedure's own words: learned at compile time from the training conversations.

A word that users said many times in training but never as (part of) a slot value belongs to the
procedure's phrasing ("please", "ticket", "under"), not to a value. The runtime's copy
constraint uses this lexicon to cut a message into runs of other words between such words and
sentence breaks; a value is one whole run (``runtime.value_spans``). It is a compile artifact saved
beside the weights (``value_lexicon.json``), measured on its own in the evaluation
(``EvalConfig.use_lexicon``, ``copy_runs``: by default the model's own rule, ``whole_runs``); on phrasings training never saw it knows fewer words
and the model decides more alone.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from subterra.forms import parse_form

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
