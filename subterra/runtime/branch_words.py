"""Words that point at one branch of a decision: taken from the workflow alone.

A decision step's branches are told apart by their ``when`` and the user lines training speaks for
them (``phrasing_pool(..., SEEN)``: never a held-back line). A word is a *branch word* when it is
said for one branch of the step and for no other, and is no English function word
(``lexicon.FUNCTION_WORDS``): "lost" for the card-was-lost branch, when "stolen" is said for both
("It's lost, not stolen"). A message whose content words point at exactly one branch narrows the
step's moves to that branch and what lies past it (``ReadingRules.branch_words``).
"""

from __future__ import annotations

import re

from subterra.lexicon import words
from subterra.phrasing import SEEN, phrasing_pool
from subterra.workflow import Workflow


def _said(edge) -> set[str]:
    text = " ".join((edge.when, *phrasing_pool(edge.user, SEEN)))
    return set(words(re.sub(r"\{[^}]*\}", " ", text)))


def branch_words(wf: Workflow, frame: frozenset[str]) -> dict[str, dict[str, frozenset[str]]]:
    """Per decision step, per branch target, the words said for that branch only (no frame words)."""
    out: dict[str, dict[str, frozenset[str]]] = {}
    for node in wf.nodes:
        edges = wf.out_edges(node)
        if len(edges) < 2:
            continue
        said: dict[str, set[str]] = {}
        for e in edges:  # two ways to the same step (pay by card, pay with miles) are one branch here
            said.setdefault(e.target, set()).update(_said(e) - frame)
        if len(said) < 2:
            continue
        out[node] = {t: frozenset(w - set().union(*(o for u, o in said.items() if u != t))) for t, w in said.items()}
    return out


def pointed_branch(words_of: dict[str, dict[str, frozenset[str]]], at: str | None, message: str) -> str | None:
    """The one branch of ``at`` whose branch words (``words_of``, from ``branch_words``) ``message``
    says, if exactly one is pointed at."""
    branches = words_of.get(at) if at is not None else None
    if not branches:
        return None
    said = set(words(message))
    pointed = [target for target, own in branches.items() if own & said]
    return pointed[0] if len(pointed) == 1 else None
