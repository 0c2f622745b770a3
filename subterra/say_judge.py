"""The offline judge of a reply: does what the agent told the user fit the step it is at?

Strict pass compares forms (node, slots) and the reply. Offline, with no model to ask, a reply is
judged by its words against the say lines known for each step: the workflow's own, and those the
training conversations speak (a teacher's paraphrases too). A reply's score for a step is the best
share of a known line's words that the reply contains (values and placeholders left out: "Where
will you be flying to Lisbon from?" and "Where will you be flying to {destination} from?" are the
same line); a reply *fits* a step when its score there is at least ``MIN_SCORE`` and no other step
scores higher. An agent that reaches the right node but says another step's line ("How many
people are travelling?" at the payment step) fails, and so does a reply that names a value the user
never gave ("Your flight to Bali" when the user said Tokyo). The Claude judge (``subterra.judge``)
stays optional: it scores whole conversations on criteria, this one every turn.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import TYPE_CHECKING, Iterable

from subterra.forms import parse_form
from subterra.phrasing import placeholders

if TYPE_CHECKING:
    from subterra.workflow import Workflow

MIN_SCORE = 0.6
MAX_LINES_PER_NODE = 60  # known lines per step from the training conversations (the workflow's always count)
_WORD = re.compile(r"[a-z0-9]+")
_PLACEHOLDER = re.compile(r"\{[a-z][a-z0-9_]*\}")


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


class SayJudge:
    """Judges replies of one workflow; ``lines`` adds say templates per node (from training)."""

    def __init__(self, wf: Workflow, lines: dict[str, Iterable[str]] | None = None):
        self.wf = wf
        known: dict[str, dict[frozenset, None]] = defaultdict(dict)
        for node in wf.nodes.values():
            for line in node.say or (node.prompt,):
                known[node.id][self._key(line)] = None
        for node, extra in (lines or {}).items():
            if node not in wf.nodes:
                continue
            for line in extra:
                if len(known[node]) >= len(wf.nodes[node].say) + MAX_LINES_PER_NODE:
                    break
                known[node][self._key(line)] = None
        self.known = {node: [k for k in keys if k] for node, keys in known.items()}
        # words a value may share with the workflow's own lines ("economy") are no value
        self.literal = set()
        for node in wf.nodes.values():
            for line in node.say:
                self.literal.update(words(_PLACEHOLDER.sub(" ", line)))
        self.values = {v for slot in wf.slots.values() for v in slot.values if len(v) >= 3}

    @staticmethod
    def _key(line: str) -> frozenset:
        return frozenset(words(_PLACEHOLDER.sub(" ", line)))

    @classmethod
    def from_corpus(cls, wf: Workflow, rows) -> "SayJudge":
        """A judge that knows the say lines of the corpus's training conversations too."""
        import json

        lines: dict[str, list[str]] = defaultdict(list)
        train = rows.filter(rows["split"] == "train") if "split" in rows.columns else rows
        for messages in train["messages"]:
            for m in json.loads(messages):
                if m["role"] != "assistant":
                    continue
                try:
                    form = parse_form(m["content"])
                except ValueError:
                    continue
                lines[form.node].append(form.say)
        return cls(wf, lines)

    def scores(self, say: str, held: dict[str, str]) -> dict[str, float]:
        """Each step's score for ``say`` (the text the user read, values filled in)."""
        value_words = {w for v in held.values() for w in words(str(v))}
        said = set(words(say)) - (value_words - self.literal)
        out = {}
        for node, keys in self.known.items():
            out[node] = max((len(k & said) / len(k) for k in keys), default=0.0)
        return out

    def fits(self, node: str, say: str, held: dict[str, str], user_texts: Iterable[str] = (),
             values: Iterable[str] = ()) -> str | None:
        """None if ``say`` fits step ``node``; else why not (``another_step``, ``no_step``,
        ``unheld_value``). ``values``: values the conversation knows of besides the workflow's."""
        if _PLACEHOLDER.search(say) and any(p not in held for p in placeholders(say)):
            return "unheld_placeholder"
        scores = self.scores(say, held)
        own = scores.get(node, 0.0)
        if own < MIN_SCORE:
            return "no_step" if max(scores.values(), default=0.0) < MIN_SCORE else "another_step"
        if any(s > own + 1e-9 for n, s in scores.items() if n != node):
            return "another_step"
        heard = " ".join(user_texts).casefold()
        held_text = " ".join(str(v) for v in held.values()).casefold()
        for value in set(values) | self.values:
            if not value or len(value) < 3:
                continue
            pattern = rf"(?<![a-z0-9]){re.escape(value.casefold())}(?![a-z0-9])"
            if re.search(pattern, say.casefold()) and not re.search(pattern, heard) and not re.search(pattern, held_text):
                if not set(words(value)) <= self.literal:
                    return "unheld_value"
        return None
