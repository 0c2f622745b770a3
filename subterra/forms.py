"""The assistant form: every assistant turn is a JSON object ``{"node", "slots", "say"}``.

The deployed model fills this form; the system around it reads where the conversation is
(``node``), what the user's last message provided (``slots``, verbatim spans of that message)
and what to show the user (``say``). Scoring compares forms, so it is objective.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

FORM_KEYS = ("node", "slots", "say")


@dataclass(frozen=True)
class Form:
    node: str
    slots: dict[str, str] = field(default_factory=dict)
    say: str = ""

    def to_json(self) -> str:
        return render_form(self)


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
