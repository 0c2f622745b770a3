"""People's typing on training lines: lower case, no closing punctuation, fillers, typos.

The workflow's lines and our pools are written as careful sentences; people type "glasgow",
"the 2nd of july", "busines", "um economy i guess". A training conversation with ``noise`` set
perturbs that share of its user answers the way robustness benchmarks for task-oriented dialogue
do (LAUG's word perturbation and speech disfluency; casing and punctuation): each perturbed line
gets one or more of them. Values are never misspelt (the form copies them from the message, so a
misspelt one would be taught as the value); a line in lower case holds its values in lower case.
"""

from __future__ import annotations

import random
import re

FILLERS = ("um ", "uh ", "so ", "well ", "ok so ", "hmm ", "right, ", "yeah ", "erm ", "oh ")
_PLACEHOLDER = re.compile(r"\{[a-z_][a-z0-9_]*\}")
_WORD = re.compile(r"[A-Za-z]{4,}")


def typo(word: str, rng: random.Random) -> str:
    """One slip of the fingers: two letters swapped, one dropped or one doubled."""
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def perturb(template: str, values: dict[str, str], rng: random.Random) -> tuple[str, dict[str, str]]:
    """``template`` (placeholders unfilled) and ``values`` as a person might type them."""
    kinds = [k for k in ("lower", "bare", "filler", "typo") if rng.random() < 0.5] or [rng.choice(("lower", "bare", "filler", "typo"))]
    text, values = template, dict(values)
    if "typo" in kinds:
        parts = _PLACEHOLDER.split(text)
        holders = _PLACEHOLDER.findall(text)
        words = [(p, m) for p, part in enumerate(parts) for m in _WORD.finditer(part)]
        if words:
            p, m = rng.choice(words)
            parts[p] = parts[p][: m.start()] + typo(m.group(), rng) + parts[p][m.end():]
        text = "".join(part + (holders[i] if i < len(holders) else "") for i, part in enumerate(parts))
    if "filler" in kinds:
        text = rng.choice(FILLERS) + (text[0].lower() + text[1:] if text[:2] not in ("I ", "I'") else text)
    if "bare" in kinds:
        text = text.rstrip(".!")
    if "lower" in kinds:
        text = _PLACEHOLDER.sub(lambda m: m.group(), text.lower())
        values = {k: v.lower() for k, v in values.items()}
    return text, values
