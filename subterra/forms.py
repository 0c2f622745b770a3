"""The assistant form: every assistant turn is a JSON object ``{"node", "slots", "say"}``.

The deployed model fills this form; the system around it reads where the conversation is
(``node``), what the user's last message provided (``slots``, verbatim spans of that message)
and what to show the user (``say``: a template whose ``{slot}`` placeholders the runtime fills from
the values the conversation holds, ``shown_say``). Scoring compares forms, so it is objective.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from subterra.phrasing import fill, placeholders

FORM_KEYS = ("node", "slots", "say")

# The form's fixed structure, cut where every tokenizer cuts: each piece the runtime forces or
# offers ends where a letter or digit meets punctuation, or before a space, so the pieces encode
# to exactly the tokens the whole form encodes to in training (a byte-level BPE merges '",' or
# '"},' into one token; the tiny tokenizer has each piece as one token of its own:
# ``subterra.tokenizer``).
FORM_HEAD = '{"node": "'
NODE_END = '",'  # a node id is chosen with what closes it
SLOTS_KEY = ' "slots":'
NO_SLOTS = ' {},'
FIRST_KEY = ' {"'
NEXT_KEY = ' "'
KEY_END = '":'
VALUE_HEAD = ' "'
VALUE_MORE = '",'  # a value is chosen with what follows it: another slot ...
VALUE_LAST = '"},'  # ... or the end of the slots
SAY_HEAD = ' "say": "'
FORM_CLOSE = '"}'
FORM_PIECES = (FORM_HEAD, NODE_END, SLOTS_KEY, NO_SLOTS, FIRST_KEY, NEXT_KEY, KEY_END, VALUE_HEAD, VALUE_MORE, VALUE_LAST,
               SAY_HEAD, FORM_CLOSE)


@dataclass(frozen=True)
class Form:
    node: str
    slots: dict[str, str] = field(default_factory=dict)
    say: str = ""

    def to_json(self) -> str:
        return render_form(self)


def shown_say(say: str, held: dict[str, str]) -> tuple[str, bool]:
    """(the text the user reads, complete): ``say`` with every ``{slot}`` placeholder filled from
    the values the conversation holds; not complete if a placeholder names no value held (it is
    left as written, and the form is counted invalid)."""
    return fill(say, held), all(p in held for p in placeholders(say))


FALLBACK_SAY = "Sorry, could you say that again?"


def user_say(say: str, held: dict[str, str], lines=()) -> tuple[str, bool]:
    """(what the user is shown, the model's own say was complete): a say with a placeholder the
    conversation does not hold is never shown (the raw "{destination}" or an empty gap); the
    step's first workflow line whose placeholders are all held is shown instead, or
    ``FALLBACK_SAY`` if none is."""
    text, complete = shown_say(say, held)
    if complete:
        return text, True
    for line in lines:
        if all(p in held for p in placeholders(line)):
            return fill(line, held), False
    return FALLBACK_SAY, False


def render_form(form: Form) -> str:
    """The canonical text of a form: keys in fixed order, ``", "`` and ``": "`` separators."""
    return json.dumps(
        {"node": form.node, "slots": dict(form.slots), "say": form.say}, ensure_ascii=False
    )


def parse_form(text: str) -> Form:
    """Parse a form; raises ``ValueError`` naming what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"form is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ValueError("form is not a JSON object")
    if tuple(data) != FORM_KEYS:
        raise ValueError(f"form keys must be {list(FORM_KEYS)} in that order, got {list(data)}")
    node, slots, say = data["node"], data["slots"], data["say"]
    if not isinstance(node, str) or not node:
        raise ValueError("form 'node' must be a non-empty string")
    if not isinstance(slots, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in slots.items()
    ):
        raise ValueError("form 'slots' must map slot names to strings")
    if not isinstance(say, str):
        raise ValueError("form 'say' must be a string")
    return Form(node=node, slots=slots, say=say)
