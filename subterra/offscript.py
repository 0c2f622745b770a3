"""Off-script user behaviours ("kinds"): the one registry every part that places, plays, words,
scores or repairs an off-script turn reads.

An off-script message answers nothing: the agent stays at the step it is at (the scripted user
counts no new visit there, the teacher's script keeps the step, evaluation counts the turn handled
when the agent's next form is at the same step). A kind says how the scripted user words its
message (a ``Pool`` of ``subterra.phrasing``), how the template teacher's agent opens its reply
(lines there too), whether it carries a slot correction (the user replaces a value they gave: a
scenario places one only where a given slot has a different correction value, and the form must
capture the new value), and what Claude is told the user does when Claude plays the user
(``claude_user``) or writes the conversation (``claude_teacher``).

Adding a kind is one entry in ``KINDS`` and its lines in ``subterra.phrasing``. The order of
``KINDS`` is part of every generated corpus (a scenario's seeded draw indexes it) and of the
Claude prompts (their cached answers are keyed by the prompt's text). Two prompts speak of
off-script turns in general words, not per kind: the Claude teacher's instruction for the agent's
reply (re-ask, confirm a correction) and the judge's ``graceful_handling`` criterion; a kind
that needs another kind of reply says so there too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from subterra import phrasing as ph


@dataclass(frozen=True)
class OffScript:
    name: str  # as scenarios, corpora, transcripts and repair clusters name it
    user_pool: str  # the ``phrasing`` Pool the scripted user draws its message from
    agent_lines: str  # the ``phrasing`` lines the template agent opens its reply with
    claude_user: str  # what Claude playing the user is told the message does
    claude_teacher: str  # the same, for Claude writing a whole conversation
    # the message replaces a value given earlier: it carries ``{slot: new value}``, the form must
    # capture it, and the agent's line names the new value as ``{new}``
    corrects: bool = False

    # the wording is named, not held: it is looked up in ``phrasing`` when spoken, so a pool
    # that gains lines there is the one spoken and hashed (``phrasing.lines_digest``)
    @property
    def user_lines(self) -> ph.Pool:
        return getattr(ph, self.user_pool)

    def agent_prefix(self, slots: dict[str, str], rng: random.Random) -> str:
        """The template agent's opening words after this kind of message (``slots``: what it carried)."""
        line = rng.choice(getattr(ph, self.agent_lines))
        return ph.fill(line, {"new": "{%s}" % next(iter(slots))}) if self.corrects else line


KINDS: dict[str, OffScript] = {kind.name: kind for kind in (
    OffScript("unclear", "UNCLEAR", "AGENT_UNCLEAR",
              claude_user="say you did not understand the assistant's last message, giving no value.",
              claude_teacher="say you did not understand the last message, giving no value."),
    OffScript("offtopic", "OFF_TOPIC", "AGENT_OFF_TOPIC",
              claude_user="ask something unrelated, giving no value.",
              claude_teacher="ask something unrelated to the procedure, giving no value."),
    OffScript("correction", "CORRECTIONS", "AGENT_CORRECTION", corrects=True,
              claude_user='correct the value under "corrects" to the one under "gives".',
              claude_teacher='correct the value under "corrects" to the one under "gives".'),
)}
# what a user says who cannot do what the scenario planned (a correction with nothing left to
# correct) or who was shown no real step
CONFUSED = KINDS["unclear"]


def corrects(kind: str) -> bool:
    """Does a user message of ``kind`` (an off-script kind, ``answer``, ``opener``) carry a correction?"""
    return kind in KINDS and KINDS[kind].corrects


def claude_lines(field: str) -> str:
    """Every kind as a Claude prompt describes it (``field``: ``claude_user`` or ``claude_teacher``)."""
    return " ".join(f"{kind.name}: {getattr(kind, field)}" for kind in KINDS.values())
