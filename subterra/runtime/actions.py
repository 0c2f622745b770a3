"""What a turn program asks of the driver that runs it.

A program (``Program``: a generator) yields one action at a time and is sent the answer:

* ``("force", token)``: the token is fed as is (the form's structure, a user's message);
* ``Choice``: one token, decoded greedily among the allowed ones; the chosen token is sent back;
* ``Score``: the most likely of several token sequences, scored whole; its key is sent back.

The drivers (``Lockstep``, ``ChatSession``, ``subterra.conversations``) answer them; the form
programs (``subterra.runtime.turns``) and ``choose`` (``subterra.runtime.scoring``) ask them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Iterable


@dataclass
class Choice:
    """Ask the driver for one token among ``allowed``; ``None``: any token but those the named
    ``mask`` bans (``None``: the driver's default, every special token). ``follow(token, limit)``:
    up to ``limit`` tokens likely to come after the chosen one (a draft the driver may verify in
    the same forward; what is generated stays the greedy choice, token by token)."""

    allowed: list[int] | None
    mask: str | None = None
    follow: Callable[[int, int], list[int]] | None = None


@dataclass
class Score:
    """Ask the driver for the most likely of several token sequences (scored whole, not greedily).

    ``counted`` (optional) lists, per candidate, the token positions whose probability counts:
    for a copied span only the model's real decisions — where the span starts, whether it goes on
    after each word, how it ends — since the rest of each word follows from the message.
    """

    candidates: dict
    counted: dict | None = None


Program = Generator[object, int | None, None]


def force(ids: Iterable[int]):
    for t in ids:
        yield ("force", t)
