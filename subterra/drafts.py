"""Drafts for speculative decoding of a form's ``say``: what a compiled model is likely to write next.

A compiled model writes, at a node, one of the few say lines it was trained on. So once it has
written a say's first tokens, the rest is usually known: a say line of the workflow's node that
starts with those tokens, or one the model itself wrote at that node earlier in the batch. The
runtime (``Lockstep``) feeds such a continuation whole and keeps the longest stretch of it that
greedy decoding would have chosen token by token: a draft never changes what is generated, only
how many forwards it takes (about a fifth of an evaluation's forwards are decoding says otherwise).

Say lines are stored as the token sequences the program's ``say`` loop sees: the opening token
(the quote, or the quote merged with the say's first characters) up to and including the token
that closes the say. A model often opens with a sentence of its own ("Perfect.") before a known
line: after a sentence, the say may take a declared line up again (``after_sentence``).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from subterra.forms import SAY_HEAD

MAX_LINES = 64  # say lines kept per node: the ones the model writes most are the first it writes
SENTENCE = "Sure."  # a sentence a say may open with before a known line


class SayDrafts:
    """Known say lines per node, as a trie of their tokens: a say being written holds its place
    in it (``start``, ``step``), so a draft costs one lookup per token whatever the say's length."""

    def __init__(self, say_ends: Iterable[int]):
        self.say_ends = frozenset(say_ends)
        self._roots: dict[str, Place] = {}
        self._continued: dict[str, Place] = {}  # the declared lines as they follow a sentence
        self._lines: dict[str, int] = {}

    @classmethod
    def of_workflow(cls, codec) -> "SayDrafts":
        """Drafts seeded with every say line the workflow declares, tokenized as a form holds them."""
        import json

        drafts = cls(codec.say_ends)
        head = codec.say_head
        before = codec.encode(SAY_HEAD + SENTENCE)
        for node in codec.wf.nodes.values():
            for line in node.say:
                text = json.dumps(line, ensure_ascii=False)[1:-1] + '"}'
                ids = codec.encode(SAY_HEAD + text)
                if ids[: len(head)] == head:
                    drafts.add(node.id, ids[len(head):])
                # the same line after a sentence of the model's own ("Perfect. Do you ..."), as its
                # tokens come there (a byte-level BPE merges the space into the next word)
                ids = codec.encode(SAY_HEAD + SENTENCE + " " + text)
                if ids[: len(before)] == before:
                    drafts.add(node.id, ids[len(before):], after_sentence=True)
        return drafts

    def add(self, node: str, tokens: Sequence[int], after_sentence: bool = False) -> None:
        """Keep a say line written (or declared) at ``node``, cut after the token closing it
        (``after_sentence``: a declared line as it continues a say after a sentence)."""
        line: list[int] = []
        for token in tokens:
            line.append(token)
            if token in self.say_ends:
                break
        else:
            return  # a say that never closed (cut off): nothing to draft from
        if after_sentence:
            place = self._continued.setdefault(node, Place((), 0))
        elif self._lines.get(node, 0) >= MAX_LINES:
            return
        else:
            place = self.start(node)
        kept, new = tuple(line), False
        for depth, token in enumerate(kept, 1):
            if token not in place.children:
                place.children[token], new = Place(kept, depth), True
            place = place.children[token]
        if not after_sentence:
            self._lines[node] = self._lines.get(node, 0) + new

    def start(self, node: str) -> "Place":
        """The place before a say of ``node``'s first token."""
        return self._roots.setdefault(node, Place((), 0))

    def after_sentence(self, node: str) -> "Place | None":
        """The place where a say of ``node`` that left the known lines may take one up again,
        after a sentence of its own; None if the node declares no line."""
        return self._continued.get(node)

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
