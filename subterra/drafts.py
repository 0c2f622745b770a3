"""Drafts for speculative decoding of a form's ``say``: what a compiled model is likely to write next.

A compiled model writes, at a node, one of the few say lines it was trained on. So once it has
written a say's first tokens, the rest is usually known: a say line of the workflow's node that
starts with those tokens, or one the model itself wrote at that node earlier in the batch. The
runtime (``Lockstep``) feeds such a continuation whole and keeps the longest stretch of it that
greedy decoding would have chosen token by token: a draft never changes what is generated, only
how many forwards it takes (about a fifth of an evaluation's forwards are decoding says otherwise).

Say lines are stored as the token sequences the program's ``say`` loop sees: the opening token
(the quote, or the quote merged with the say's first characters) up to and including the token
that closes the say.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from subterra.forms import SAY_HEAD

MAX_LINES = 64  # say lines kept per node: the ones the model writes most are the first it writes


class SayDrafts:
    """Known say lines per node, as a trie of their tokens: a say being written holds its place
    in it (``start``, ``step``), so a draft costs one lookup per token whatever the say's length."""

    def __init__(self, say_ends: Iterable[int]):
        self.say_ends = frozenset(say_ends)
        self._roots: dict[str, Place] = {}
        self._lines: dict[str, int] = {}

    @classmethod
    def of_workflow(cls, codec) -> "SayDrafts":
        """Drafts seeded with every say line the workflow declares, tokenized as a form holds them."""
        import json

        drafts = cls(codec.say_ends)
        head = codec.say_head
        for node in codec.wf.nodes.values():
            for line in node.say:
                ids = codec.encode(SAY_HEAD + json.dumps(line, ensure_ascii=False)[1:-1] + '"}')
                if ids[: len(head)] == head:
                    drafts.add(node.id, ids[len(head):])
        return drafts

    def add(self, node: str, tokens: Sequence[int]) -> None:
        """Keep a say line written (or declared) at ``node``, cut after the token closing it."""
        line: list[int] = []
        for token in tokens:
            line.append(token)
            if token in self.say_ends:
                break
        else:
            return  # a say that never closed (cut off): nothing to draft from
        if self._lines.get(node, 0) >= MAX_LINES:
            return
        place, kept, new = self.start(node), tuple(line), False
        for depth, token in enumerate(kept, 1):
            if token not in place.children:
                place.children[token], new = Place(kept, depth), True
            place = place.children[token]
        self._lines[node] = self._lines.get(node, 0) + new

    def start(self, node: str) -> "Place":
        """The place before a say of ``node``'s first token."""
        return self._roots.setdefault(node, Place((), 0))

    @staticmethod
    def step(place: "Place | None", token: int) -> "Place | None":
        """The place after ``token``; None once the say leaves every known line."""
        return place.children.get(token) if place is not None else None

    @staticmethod
    def after(place: "Place | None", token: int, limit: int) -> list[int]:
        """Up to ``limit`` tokens a known line continues with after ``place`` and ``token``."""
        following = place.children.get(token) if place is not None else None
        if following is None or limit <= 0:
            return []
        return list(following.line[following.depth : following.depth + limit])


class Place:
    """A node of the trie: the tokens that have followed here, and one known line through it."""

    __slots__ = ("children", "line", "depth")

    def __init__(self, line: tuple[int, ...], depth: int):
        self.children: dict[int, Place] = {}
        self.line, self.depth = line, depth
