"""Lines the scripted user and the template agent draw from, and the seen/validation/unseen split.

A step's (or branch's) user lines are split once: the last quarter (at least one line, when the
step has two or more) is *held back* for the ``test_unseen`` split and never used in training;
where at least three training lines are left, the line before them is held back for
``validation`` (the set every choice is made on), else validation speaks the training lines.
Our own generic lines (openers, off-script questions, acknowledgements, corrections) are ``Pool``s
that name their held-back lines: the test ones held back when the pools were first written, so
adding training variety never changes what ``test_unseen`` measures, and validation lines of
their own. A corpus speaks the original
lines (``phrasings: core``, the default) or those plus more variety (``wide``: openers 8 -> 15,
unclear 6 -> 18, off-topic 6 -> 12, corrections 5 -> 30, more prefixes and suffixes). A pretrained
student learns from the variety; the tiny from-scratch student on its token budget does worse
with it (``docs/experiments.md``), so the profiles choose.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Sequence

SEEN, UNSEEN, WIDE, UNSEEN_WIDE = "seen", "unseen", "wide", "unseen_wide"
VALIDATION, VALIDATION_WIDE = "validation", "validation_wide"
# the corpus setting -> (the phrasing of its train and holdout scenarios, of its validation ones, of its
# test_unseen ones). WIDE: the seen lines and the extra variety; *_WIDE: held-back lines in the wide decorations
PHRASINGS = {"core": (SEEN, VALIDATION, UNSEEN), "wide": (WIDE, VALIDATION_WIDE, UNSEEN_WIDE)}
_WIDE_DRESS = (WIDE, UNSEEN_WIDE, VALIDATION_WIDE)


@dataclass(frozen=True)
class Pool:
    """Lines of our own generic pools with the held-back ones named explicitly (``unseen``), so
    lines can be added without moving one from one side to the other: ``test_unseen`` keeps
    measuring the same phrasings whatever training speaks. ``seen`` are the original training
    lines; ``added`` the variety a corpus with ``phrasings: wide`` speaks besides them, or
    ``wide_order`` all its lines in the order a seeded draw indexes (when not seen + added)."""

    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    added: tuple[str, ...] = ()
    wide_order: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()  # lines only the validation set speaks (written apart from both others)

    @property
    def wide(self) -> tuple[str, ...]:
        return self.wide_order or self.seen + self.added

    @property
    def extra(self) -> tuple[str, ...]:
        """The lines only a wide corpus speaks."""
        return tuple(line for line in self.wide if line not in self.seen)


# The unseen lines are the ones held back since the first corpus format (the last quarter of the
# original pools, which are ``seen`` + ``unseen`` in their original order); ``added`` is the
# variety a teacher would add: short and long, polite and curt, the old value named first or last.
OPENERS = Pool(
    seen=("Hi.", "Hello!", "Hi there.", "Hello, I need some help.", "Good morning.", "Hey, can you help me?",
          "Hi, I have a question.", "Good afternoon."),
    wide_order=("Hi.", "Hello!", "Hi there.", "Hello, I need some help.", "Good morning.", "Hey, can you help me?",
          "Hi, I have a question.", "Good evening.", "Hiya.", "Hello, is this the right place?", "Good afternoon.",
          "Morning!", "Hey there, I hope you can help.", "Hi, quick one.", "Greetings."),  # as the measured ladder drew them
    unseen=("Hello there, are you able to help?", "Hey."),
    validation=("Hi, hope you're well.", "Howdy.", "Hello, anyone there?"),
)
ACKNOWLEDGEMENTS = Pool(
    seen=("OK.", "Sure.", "Alright.", "Yes, go ahead.", "Sounds good.", "Okay, thanks.", "Fine by me.", "Yes."),
    added=("Yep.", "Great, continue.", "No problem.", "Right.", "Okay then."),
    unseen=("Go on.", "That works."),
    validation=("Cool.", "Fine.", "Alright, carry on."),
)
# the off-script kinds' lines: which kind speaks which pool, and answers with which agent lines
# below, is ``subterra.offscript.KINDS``
UNCLEAR = Pool(
    seen=("Sorry, what do you mean?", "Hmm, I am not sure.", "Can you say that again?", "Wait, what?",
          "I did not quite get that.", "Could you explain that differently?"),
    added=("Sorry?", "Huh?", "What?", "Come again?", "I'm confused.", "What was the question?", "I don't follow.",
           "Can you repeat that?", "Sorry, I missed that.", "Could you clarify?", "Eh?", "What do you need from me?"),
    unseen=("Not sure what you are asking.", "Pardon?"),
    validation=("Sorry, lost you there.", "What do you mean exactly?", "Hm?"),
)
OFF_TOPIC = Pool(
    seen=("By the way, do you have a mobile app?", "Quick question, what are your opening hours?",
          "Is this chat recorded?", "Do you know if it will rain today?", "Can I pay with a gift card?",
          "Are you a real person?"),
    added=("Do you sell travel insurance?", "What is your phone number?", "Can I get a discount?", "Is there free wifi?",
           "What time is it there?", "Do you have a loyalty app?"),
    unseen=("Where is your head office?", "Do you have a newsletter?"),
    validation=("Can I leave a review somewhere?", "Are you open on Sundays?", "Do you have a student discount?"),
)
# A correction always names the value it replaces: "it should be Zurich" alone does not say whether
# the origin or the destination changed, so nobody (model or judge) could score it objectively.
CORRECTIONS = Pool(
    seen=("Sorry, I meant {new}, not {old}.", "Actually, make that {new} instead of {old}.",
          "Wait, not {old}, it should be {new}.", "Correction: {new}, not {old}.", "Oops, I said {old} but I meant {new}."),
    added=("Hold on, {old} is wrong, it is {new}.", "Change {old} to {new}, please.", "No wait, {new}. Not {old}.",
           "I gave you {old} by mistake, it's {new}.", "Can you replace {old} with {new}?", "Scratch {old}, I want {new}.",
           "My mistake: {new} rather than {old}.", "{old} was a typo, I meant {new}.", "Not {old}. {new}.",
           # more of a teacher's variety (written without the held-back line's wording)
           "Please update {old} to {new}.", "I typed {old}, but it is {new}.", "Make it {new} rather than {old}, sorry.",
           "Not {old} after all. {new}, please.", "{new}, sorry, not {old}.", "Ah, {old} was wrong. Use {new}.",
           "Instead of {old}, put {new}.", "Swap {old} for {new}, please.", "One correction, {old} is now {new}.",
           "It's {new}, I wrongly said {old}.", "Wrong one: {old}. Right one: {new}.", "Sorry, my error, {old} needs to be {new}.",
           "Update: {new} instead of {old}.", "Replace {old} by {new}.", "I got that wrong, {new} and not {old}.",
           "Can you change it from {old} to {new}?"),
    unseen=("Let me fix that: {old} should be {new}.",),
    validation=("Oh no, not {old}, sorry, {new}.", "{old}? No, I meant {new}."),
)
USER_PREFIXES = ("", "", "", "Um, ", "Well, ", "Okay, ", "So, ")
USER_SUFFIXES = ("", "", "", " Thanks.", " Thank you!", " Cheers.")
WIDE_PREFIXES = ("", "", "", "", "", "Um, ", "Well, ", "Okay, ", "So, ", "Right, ", "Oh, ", "Hmm, ")
WIDE_SUFFIXES = ("", "", "", "", "", " Thanks.", " Thank you!", " Cheers.", " Please.", " Thanks a lot.")

AGENT_ACKS = ("", "", "Thanks.", "Great.", "Got it.", "Perfect.", "Thank you.")
AGENT_UNCLEAR = ("No problem, let me put it another way.", "Sorry for being unclear.", "Let me rephrase.")
AGENT_OFF_TOPIC = (
    "I am afraid I cannot help with that here.", "Good question, but that is outside this chat.",
    "I cannot answer that one, sorry.",
)
AGENT_CORRECTION = ("Got it, I have changed that to {new}.", "Thanks, updated to {new}.", "No problem, {new} it is.")


def held_back_count(n: int) -> int:
    return max(1, n // 4) if n >= 2 else 0


MIN_TRAINING_LINES = 3  # a line is held back for validation only if this many stay for training


def validation_count(n: int) -> int:
    """Lines of a workflow's ``n`` held back for validation (besides the test ones)."""
    return 1 if n - held_back_count(n) - 1 >= MIN_TRAINING_LINES else 0


def phrasing_pool(lines: Sequence[str], phrasing: str) -> tuple[str, ...]:
    """The lines usable for ``phrasing``: a ``Pool``'s named part; of a workflow's own lines, the
    last quarter is unseen (test), the line before it validation where three or more stay for
    training, the rest seen (all lines are usable if none is held back)."""
    if isinstance(lines, Pool):
        if phrasing in (VALIDATION, VALIDATION_WIDE):
            return lines.validation or lines.seen
        return {UNSEEN: lines.unseen, UNSEEN_WIDE: lines.unseen, WIDE: lines.wide}.get(phrasing, lines.seen)
    lines = tuple(lines)
    k = held_back_count(len(lines))
    if k == 0:
        return lines
    if phrasing in (UNSEEN, UNSEEN_WIDE):
        return lines[-k:]
    v = validation_count(len(lines))
    if phrasing in (VALIDATION, VALIDATION_WIDE):
        return lines[-k - v:-k] if v else lines[:-k]
    return lines[:-k - v]


def decorations(phrasing: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prefixes, suffixes) a user's answer is dressed in: the wider ones in a ``wide`` corpus."""
    return (WIDE_PREFIXES, WIDE_SUFFIXES) if phrasing in _WIDE_DRESS else (USER_PREFIXES, USER_SUFFIXES)


def lines_digest(setting: str) -> str:
    """A 16-hex digest of every generic line and decoration a corpus with ``phrasings: setting``
    speaks (both of its phrasings), so a recompile's path hashes see a pool that gained lines."""
    from subterra.offscript import KINDS  # here: offscript reads its lines from this module

    pools = (OPENERS, ACKNOWLEDGEMENTS) + tuple(kind.user_lines for kind in KINDS.values())
    spoken = [[list(phrasing_pool(pool, phrasing)) for pool in pools] + [list(d) for d in decorations(phrasing)]
              for phrasing in PHRASINGS[setting]]
    return hashlib.sha256(json.dumps(spoken).encode()).hexdigest()[:16]


_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([a-z][a-z0-9_]*)\}")  # {{ and }} are literal braces, as the validator reads them


def fill(template: str, values: dict[str, str]) -> str:
    """Replace ``{slot}`` placeholders by plain lookup: nothing in a template is ever evaluated
    (no ``str.format``: ``{x.__class__}`` or ``{x!r}`` stay as written), and a filled value is
    never read again."""

    def one(m: re.Match) -> str:
        if m.group(1) is None:
            return m.group(0)[0]
        return str(values.get(m.group(1), m.group(0)))

    return _PLACEHOLDER.sub(one, template)


def templatize(text: str, values: dict[str, str]) -> str:
    """``text`` with every whole-word occurrence of a value in ``values`` replaced by its
    ``{slot}`` placeholder (longest values first; literal braces doubled), so that ``fill(result,
    values)`` gives ``text`` back. How a say written with the values in it (Claude's) becomes the
    template the student learns to write."""
    text = text.replace("{", "{{").replace("}", "}}")
    ordered = sorted(((v, s) for s, v in values.items() if v), key=lambda p: -len(p[0]))
    if not ordered:
        return text
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(v)}(?!\w)" for v, _ in ordered))
    slot_of = {}
    for v, s in ordered:
        slot_of.setdefault(v, s)
    return pattern.sub(lambda m: "{%s}" % slot_of[m.group(0)], text)


def placeholders(template: str) -> list[str]:
    """The slot names ``fill`` would look up, in order."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)]


def uses(template: str, slot: str) -> bool:
    return slot in placeholders(template)
