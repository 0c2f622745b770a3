"""Words that say which slot the value after them is for: taken from the workflow alone.

The user lines training speaks (``phrasing_pool(..., SEEN)``: never a held-back line) put a word
right before a value: "I'd like to go to {destination}", "We fly out of {origin}". A word is a
*cue* of a slot when it stands right before that slot's placeholder in two lines or more and before
no other slot's in any: "to" is the destination's, "from" the origin's. A span of a message
that stands right after a cue of another slot only is not offered to this one, and one that stands
after a cue of this slot is the only kind offered to it: "2 tickets Chicago to Havana" offers Havana
to the destination alone, and never to the origin (``ReadingRules.slot_cues``).
"""

from __future__ import annotations

import re

from subterra.phrasing import SEEN, phrasing_pool
from subterra.workflow import Workflow

_BEFORE_PLACEHOLDER = re.compile(r"([^\W\d_]+)\s+\{(\w+)\}")


MIN_LINES = 2  # a cue stands before its slot's values in this many lines at least: "thinking of {destination}"
# once is no cue ("out of London" is an origin)


def slot_cues(wf: Workflow) -> dict[str, str]:
    """Per cue word (lower case), the one slot whose values it stands right before in training's
    lines, in ``MIN_LINES`` of them or more."""
    seen: dict[str, list[str]] = {}
    for node in wf.nodes:
        for edge in wf.out_edges(node):
            for line in phrasing_pool(edge.user, SEEN):
                for word, slot in _BEFORE_PLACEHOLDER.findall(line):
                    seen.setdefault(word.casefold(), []).append(slot)
    return {word: slots[0] for word, slots in seen.items() if len(set(slots)) == 1 and len(slots) >= MIN_LINES}


def _cued(cues: dict[str, str], message: str, span: str) -> list[str | None]:
    """For each place ``span`` stands in ``message``, the slot of the cue right before it (or None)."""
    out = []
    for place in re.finditer(r"(?<!\w)" + re.escape(span) + r"(?!\w)", message):
        before = re.search(r"([^\W\d_]+)\s+$", message[:place.start()])
        out.append(cues.get(before.group(1).casefold()) if before else None)
    return out


def cued_elsewhere(cues: dict[str, str], message: str, span: str, slot: str) -> bool:
    """Does every place ``span`` stands in ``message`` come right after a cue of a slot other than ``slot``?"""
    places = _cued(cues, message, span)
    return bool(places) and all(c is not None and c != slot for c in places)


def cued_for(cues: dict[str, str], message: str, span: str, slot: str) -> bool:
    """Does ``span`` stand right after a cue of ``slot`` somewhere in ``message`` ("to Havana")? Then a
    span that does not is no value of ``slot`` ("Chicago" in "Chicago to Havana")."""
    return slot in _cued(cues, message, span)
