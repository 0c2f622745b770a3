"""Words that point at one branch of a decision: taken from the workflow alone.

A decision step's branches are told apart by their ``when`` and the user lines training speaks for
them (``phrasing_pool(..., SEEN)``: never a held-back line). A word is a *branch word* when it is
said for one branch of the step and for no other, and is no English function word
(``lexicon.FUNCTION_WORDS``) nor the business's name (``business_name``): "lost" for the
card-was-lost branch, when "stolen" is said for both ("It's lost, not stolen"). A message whose content words point at exactly one branch narrows the
step's moves to that branch and what lies past it (``ReadingRules.branch_words``).

A yes and a no are words of a branch too, in whatever words people say them (``yes_no``: "yep",
"sure", "fine" are a yes, "nah" a no): the branch whose lines say yes, when no other branch's do,
is the one "yep, book those" points at (``ReadingRules.yes_no_words``).

With ``stems``, a word's Snowball stem (``snowballstemmer``; inflections only: "correction" is no
"correct") said for one branch only points first:
"recordings" and "recorded" say the "recording" branch's "record", "billing" its "bill", and
"recording of meetings" points there though "meetings" (not "meeting") is said for calls only; where
no stem points at one branch, the words do ("bank" for a declined card, though a paid one's lines
say "banking app") (``ReadingRules.stemmed_words``).
"""

from __future__ import annotations

import functools
import re

import snowballstemmer

from subterra.lexicon import words
from subterra.phrasing import SEEN, phrasing_pool
from subterra.workflow import Workflow


# how people say yes and no; a yes after "not" ("not sure", "isn't fine") is none, and "ok", "okay",
# "alright" are no yes: they open a message whatever follows ("Okay, I'll think about it")
YES = frozenset("yes yeah yep yup yea sure fine absolutely definitely certainly".split())
NO = frozenset("no nope nah".split())
NOT = frozenset({"not", "never", "t"})  # "t": what words() leaves of "isn't", "don't"
SAYS_YES, SAYS_NO = "<yes>", "<no>"  # never a word (words() holds no "<")


# how people say they want nothing more ("that's it", "nothing else", "I'm all set"): a word of its own,
# a branch's when its lines say it and no other branch's do ("That's everything, thanks.")
DONE = re.compile(r"\b(?:that'?s|thats|that is|that'?ll be|that will be)\s+(?:it|all|everything)\b"
                  r"|\bnothing\s+(?:else|more)\b|\b(?:i'?m|im|i am|we'?re|we are)\s+(?:all\s+)?(?:done|set|sorted)\b",
                  re.I)
SAYS_DONE = "<done>"


def finished(text: str) -> set[str]:
    """``{SAYS_DONE}`` when ``text`` says there is nothing more ("thats all ta"), else nothing."""
    return {SAYS_DONE} if DONE.search(text.replace("’", "'")) else set()


def yes_no(text: str) -> set[str]:
    """``{SAYS_YES}`` or ``{SAYS_NO}`` when ``text`` says a yes or a no, and not both."""
    said = words(text)
    found = {SAYS_YES for i, w in enumerate(said) if w in YES and not (i and said[i - 1] in NOT)}
    found |= {SAYS_NO for w in said if w in NO}
    return found if len(found) == 1 else set()


_STEMMER = snowballstemmer.stemmer("english")
_INFLECTIONS = frozenset({"", "s", "es", "e", "ed", "d", "ing", "ings"})  # what a stem may drop and still be the word


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """The English Snowball stem of a word where it only drops an inflection ("recordings",
    "recorded" -> "~record", "billing" -> "~bill"), else the word itself ("correction" is no
    "correct", "expensive" no "expens"), marked so as no word."""
    found = _STEMMER.stemWord(word)
    return "~" + (found if word.startswith(found) and word[len(found):] in _INFLECTIONS else word)


NEGATED = "¬"  # marks a word said under a negation ("haven't received": "¬received"); never a word of words()


def _with_stems(said: set[str]) -> set[str]:
    return said | {NEGATED + stem(w[1:]) if w.startswith(NEGATED) else stem(w) for w in said if not w.startswith("<")}


def marked_words(text: str) -> set[str]:
    """The words of ``text``, each said under a negation marked so (``NEGATED``): up to
    ``NEGATED_SPAN`` words after "not", "never" or an "n't", inside one clause ("please don't go ahead
    with it": "¬go", "¬ahead", "¬with"); the negator itself is a plain word."""
    out: set[str] = set()
    for clause in re.split(r"[,.;:!?]", text):
        under = -1
        for i, w in enumerate(words(clause)):
            if w in NOT:
                under = i + NEGATED_SPAN
                out.add(w)
            else:
                out.add(NEGATED + w if i <= under else w)
    return out


def _said(edge, answers: bool = False, negations: bool = False, done: bool = False) -> set[str]:
    lines = (edge.when, *phrasing_pool(edge.user, SEEN))
    text = re.sub(r"\{[^}]*\}", " ", "\n".join(lines))
    said = set(words(text))  # with ``negations`` a word a line negates is said both ways: "spam" of "not in spam"
    if negations:
        said |= set().union(*(marked_words(line) for line in text.split("\n")))
    if done:
        said |= {a for line in lines for a in finished(line)}
    return said | {a for line in lines for a in yes_no(line)} if answers else said


def _bare(word: str) -> str:
    return word[1:] if word.startswith(NEGATED) else word


def branch_words(wf: Workflow, frame: frozenset[str], answers: bool = False,
                 stems: bool = False, negations: bool = False,
                 other_answer: bool = False, done: bool = False) -> dict[str, dict[str, frozenset[str]]]:
    """Per decision step, per branch target, the words said for that branch only (no frame words);
    with ``answers``, a yes or a no its lines say (``yes_no``) counts as one of its words (and with
    ``other_answer``, at a decision of two branches where one's lines say a yes and neither's a no, a
    no is the other's word, and the other way round: "nah" where only "Yes, it says accepted" is
    said; with ``done`` too, a saying that there is nothing more, ``finished``); with
    ``stems``, their stems (``stem``); with ``negations``, a word said under a negation is also a word
    of its own ("¬received" of "I haven't received it", ``marked_words``)."""
    out: dict[str, dict[str, frozenset[str]]] = {}
    frame = frame | business_name(wf)
    frame_stems = {stem(w) for w in frame} if stems else set()  # "texts" is no branch word where "text" is a frame word
    for node in wf.nodes:
        edges = wf.out_edges(node)
        if len(edges) < 2:
            continue
        said: dict[str, set[str]] = {}
        for e in edges:  # two ways to the same step (pay by card, pay with miles) are one branch here
            own = {w for w in _said(e, answers, negations, answers and done) if _bare(w) not in frame}
            said.setdefault(e.target, set()).update(
                {w for w in _with_stems(own) if _bare(w) not in frame_stems} if stems else own)
        if len(said) < 2:
            continue
        out[node] = {t: frozenset(w - set().union(*(o for u, o in said.items() if u != t))) for t, w in said.items()}
        if answers and other_answer and len(said) == 2:
            for answer, other in ((SAYS_YES, SAYS_NO), (SAYS_NO, SAYS_YES)):
                sayers = [t for t, w in said.items() if answer in w]
                if len(sayers) == 1 and not any(other in w for w in said.values()):
                    rest = next(t for t in said if t != sayers[0])
                    out[node][rest] = out[node][rest] | {other}
    return out


def business_name(wf: Workflow) -> frozenset[str]:
    """The words of the business's own name, capitalised in the assistant's description ("You are
    MeetWave's customer support assistant"): said in any step, they point at no branch."""
    return frozenset(w.casefold() for w in re.findall(r"(?<!^)(?<![.!?] )\b[A-Z][\w]*", wf.assistant.strip())
                     for w in words(w))


def answer_words(wf: Workflow, steps) -> frozenset[str]:
    """The words the user lines of ``steps`` say (every branch's): what a message answering those
    steps may say without pointing anywhere further on ("It's {customer_name}, I use MeetWave at
    work" at the greeting names no login trouble)."""
    return frozenset(w for n in steps for e in wf.out_edges(n) for w in _said(e))


NEGATED_SPAN = 3  # the words after a "not" (in its clause) that it negates: "let's not go ahead"


def pointed_branch(words_of: dict[str, dict[str, frozenset[str]]], at: str | None, message: str,
                   answers: bool = False, answered: frozenset[str] = frozenset(), stems: bool = False,
                   negations: bool = False) -> str | None:
    """The one branch of ``at`` whose branch words (``words_of``, from ``branch_words``) ``message``
    says, if exactly one is pointed at; with ``answers``, its yes or no counts as a word; words of
    steps the message answers too (``answered``, from ``answer_words``) point nowhere; with
    ``stems``, their stems decide first when they point at one branch (as ``words_of`` was built);
    with ``negations``, a word the message says under a negation is read as such (``marked_words``:
    "not received" points where lines say "haven't received", never where they only say "received"),
    and with ``answers`` a negated word of the branch a yes points at is a no ("let's not go ahead")."""
    branches = words_of.get(at) if at is not None else None
    if not branches:
        return None
    said = {w for w in (marked_words(message) if negations else set(words(message))) if _bare(w) not in answered}
    said |= yes_no(message) | finished(message) if answers else set()
    if negations and answers and SAYS_YES not in said:  # "let's not go ahead": a yes branch's plain words negated
        yes_branch = [own for own in branches.values() if SAYS_YES in own]
        if len(yes_branch) == 1 and {NEGATED + w for w in yes_branch[0]} & said:
            said.add(SAYS_NO)
    if stems:  # the stems first: "recording of meetings" says "record" of one branch, "meeting" of two
        stemmed = _with_stems(said) - {stem(w) for w in answered} - said
        pointed = [target for target, own in branches.items() if own & stemmed]
        if len(pointed) == 1:
            return pointed[0]
    pointed = [target for target, own in branches.items() if own & said]
    return pointed[0] if len(pointed) == 1 else None


@functools.lru_cache(maxsize=1)
def off_script_words() -> frozenset[str]:
    """The words (and stems) of the off-script lines training speaks (``phrasing.UNCLEAR``,
    ``OFF_TOPIC``; seen ones only): at every step the model is taught to stay with them ("Are you a
    real person?" is answered, not handed over)."""
    from subterra import phrasing as ph

    lines = [*phrasing_pool(ph.UNCLEAR, SEEN), *phrasing_pool(ph.OFF_TOPIC, SEEN)]
    return frozenset(_with_stems({w for line in lines for w in words(line)}))


def asked_with_question(wf: Workflow, at: str, target: str) -> bool:
    """Do the lines training speaks for a branch of ``at`` to ``target`` ask for it with a question
    ("Can I see the economy prices?")? Then a question may choose that branch; where they never do
    ("Economy is fine."), a question that names it ("is economy a lot cheaper?") asks about it."""
    return any("?" in line for e in wf.out_edges(at) if e.target == target
               for line in (*phrasing_pool(e.user, SEEN),))
