"""Which slots and values a form is offered after a user's message, given what the conversation
holds: a value its type rejects is never a choice, a value already held is not offered again beside
another, and a correction refills the slot whose value it names.
"""

from __future__ import annotations

from typing import Iterable

from subterra.runtime.candidates import CHOSEN_TYPES
from subterra.runtime.encoding import Codec


def fresh_values(candidates: tuple[dict, dict | None], held_value: str | None) -> tuple[dict, dict | None]:
    """``candidates`` (values, counted) without ``held_value``, unless it is the only one."""
    values, counted = candidates
    if held_value is None or held_value not in values or len(values) == 1:
        return candidates
    keep = [v for v in values if v != held_value]
    return {v: values[v] for v in keep}, ({v: counted[v] for v in keep} if counted is not None else None)


def offered_values(codec: Codec, message: str, held: dict[str, str] | None = None,
                   today=None) -> dict[str, tuple[dict, dict | None]]:
    """Per slot the message can fill, its allowed values (and their counted tokens): a value its
    type rejects is never a choice, a slot with none is not offered, and a value the conversation
    holds for the slot is left out when the message offers another (``fresh_values``), and a declared
    value said that the slot does not hold is offered alone (``Codec.said_first``)."""
    held = held or {}
    return {s: fresh_values(codec.said_first(s, c, message, held.get(s)), held.get(s)) for s in codec.wf.slots
            if (c := codec.value_candidates(s, message, today))[0]}


def named_held(codec: Codec, message: str, held: dict[str, str]) -> set[str]:
    """The copy slots whose held value ``message`` names: the value is one of the spans the copy
    constraint would offer for that slot ("Sorry, I meant Paris, not Zurich" with origin Zurich)."""
    return {s for s, v in held.items()
            if s in codec.wf.slots and codec.wf.slots[s].type not in CHOSEN_TYPES
            and v in codec.value_candidates(s, message)[0]}


def offered_keys(codec: Codec, available: Iterable[str], message: str, held: dict[str, str] | None) -> list[str]:
    """The slot names a form may fill after ``message`` (of the ``available`` ones): a correction
    names the value it replaces, so when the message names the held value of a slot, another held
    slot of the same type whose value it does not name is not offered. "Sorry, I meant Paris, not
    Zurich" with origin Zurich and destination Lima held can refill origin, never destination;
    a slot not yet held, a slot of another type, and every slot when the message names no held
    value (a step visited again) are offered as before. What it costs: "keep Zurich, the
    destination is Paris now" can only be read as a change of origin."""
    held = held or {}
    named = named_held(codec, message, held)
    kinds = {codec.wf.slots[s].type for s in named}  # none when nothing is named; never an enum's (named_held)
    return [s for s in available if s not in held or s in named or codec.wf.slots[s].type not in kinds]
