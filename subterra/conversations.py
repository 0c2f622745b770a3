"""A served conversation's state, and how a stateless request recovers it.

A chat client sends the whole conversation each turn (the OpenAI wire format is stateless). The
model's context is not that text, though: it is the tokens the model was fed and chose (each
turn's user message and the form it filled, with its node id and slots), and the runtime reads
the slots the conversation holds and the step it is at. The server recovers them by **replaying
the history**: every earlier user message goes through the model again, and each form's say, as
the user was shown it, must equal the assistant message the client sent back. Decoding is greedy
inside the form's constraints, so the same model gives the same forms: a restarted server, or
another replica, recovers any conversation with no store and no token to sign, and a history
that was edited, or that another model wrote, is refused (``HistoryMismatch``) instead of read.

Replaying costs a forward per earlier turn, so the state after each answered turn is also kept
in memory (``ConversationCache``), keyed by a digest of the conversation as the client will send
it back: the next turn of a live conversation starts from there, and only a conversation the
cache no longer holds is replayed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from subterra.forms import Form, user_say
from subterra.runtime.actions import Choice, Score, force
from subterra.runtime.encoding import Codec, ReadingRules
from subterra.runtime.turns import TurnCounter, fill_form


class HistoryMismatch(ValueError):
    """The conversation the client sent is not one this model holds."""


class ConversationEnded(ValueError):
    """A message after the conversation reached an end of the workflow."""


@dataclass(frozen=True)
class Conversation:
    """Where a conversation stands after its last answered turn."""

    fed: tuple[int, ...] = ()  # every token the model read and wrote after the system prompt
    held: dict = field(default_factory=dict)  # the slot values captured so far
    at: str | None = None  # the step it is at (None: before the first turn)
    shown: tuple[str, ...] = ()  # the assistant messages the user was shown
    outcome: str | None = None  # set once it reached an end (success, abandoned, escalated, ...)

    @property
    def ended(self) -> bool:
        return self.outcome is not None


@dataclass(frozen=True)
class Turn:
    """One answered turn: the form the model filled and what the user is shown."""

    form: Form  # the say as a template ("... {destination}")
    shown: str  # the say filled from the held slots
    conversation: Conversation  # the state after this turn
    tokens_in: int  # the context the model read for this turn (system prompt included)
    tokens_out: int  # the tokens the model chose


def history_key(workflow: str, messages: Sequence[tuple[str, str]]) -> str:
    """A digest of a conversation as (role, text) pairs: the cache's key."""
    text = json.dumps([workflow, [list(m) for m in messages]], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def recorded(program, fed: list[int]):
    """Run a lockstep row program, appending every token the model is fed (forced or chosen) to ``fed``."""
    try:
        action = next(program)
        while True:
            if isinstance(action, Score):
                action = program.send((yield action))
            elif isinstance(action, Choice):
                token = yield action
                fed.append(token)
                action = program.send(token)
            else:
                fed.append(action[1])
                yield action
                action = next(program)
    except StopIteration as stop:
        return stop.value


def answer(codec: Codec, start: Conversation, message: str, max_say_tokens: int, rules: ReadingRules,
           today=None, on_say: Callable[[str, dict], None] | None = None):
    """The program of one turn from ``start`` (its tokens already fed): the user's ``message``, the
    form the model fills, and the state after it. Returns a ``Turn``."""
    wf = codec.wf
    if start.ended:
        raise ConversationEnded(f"the conversation has ended ({start.outcome}); start a new one")
    fed: list[int] = []
    yield from recorded(force(codec.user(message)), fed)
    counter = TurnCounter()
    form, _raw, _valid = yield from recorded(
        fill_form(codec, message, max_say_tokens, counter, dict(start.held), today=today, at=start.at,
                  rules=rules, on_say=on_say), fed)
    held = {**start.held, **form.slots}
    node = wf.nodes.get(form.node)
    shown, _complete = user_say(form.say, held, node.say if node else ())
    after = Conversation(start.fed + tuple(fed), held, form.node, start.shown + (shown,),
                         node.end if node is not None and node.is_terminal else None)
    return Turn(form, shown, after, len(start.fed) + len(fed) - counter.chosen, counter.chosen)


def replay(codec: Codec, start: Conversation, past: Sequence[tuple[str, str]], max_say_tokens: int,
           rules: ReadingRules, today=None):
    """The program that replays earlier turns (user message, the assistant message the client says it
    was shown) from ``start``; returns the state after them. ``HistoryMismatch`` names the first
    turn whose say this model does not give."""
    state = start
    for i, (message, shown) in enumerate(past):
        turn = yield from answer(codec, state, message, max_say_tokens, rules, today)
        if turn.shown != shown:
            raise HistoryMismatch(
                f"assistant message {len(start.shown) + i + 1} is not what this workflow's model says there "
                f"(it says {turn.shown!r}): the history was changed, or another model wrote it; start a new conversation")
        state = turn.conversation
    return state


def continued(codec: Codec, start: Conversation, past: Sequence[tuple[str, str]], message: str, max_say_tokens: int,
              rules: ReadingRules, today=None, on_say: Callable[[str, dict], None] | None = None, kept: int = 0):
    """The program of a request: feed ``start``'s tokens (but the first ``kept``, whose keys and
    values the row resumes from), replay ``past``, answer ``message``."""
    yield from force(start.fed[kept:])
    state = yield from replay(codec, start, past, max_say_tokens, rules, today)
    return (yield from answer(codec, state, message, max_say_tokens, rules, today, on_say))


class ConversationCache:
    """The states of recent conversations by ``history_key``, least recently used dropped first.
    Each entry names the model version that wrote it (a recompile swaps models) and may keep the
    conversation's keys and values (``RowState``), so its next turn feeds only the new message;
    those are dropped first, least recently used, past ``max_kv_bytes``."""

    def __init__(self, capacity: int = 10_000, max_kv_bytes: int = 2 << 30):
        self.capacity, self.max_kv_bytes = capacity, max_kv_bytes
        self._entries: OrderedDict[str, list] = OrderedDict()  # key: [version, state, kv or None]
        self.kv_bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[str, Conversation, object] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0], entry[1], entry[2]

    def put(self, key: str, version: str, state: Conversation, kv=None) -> None:
        with self._lock:
            if key in self._entries:
                self._drop_kv(self._entries[key])
            if kv is not None and kv.nbytes > self.max_kv_bytes:
                kv = None
            self._entries[key] = [version, state, kv]
            self._entries.move_to_end(key)
            self.kv_bytes += kv.nbytes if kv is not None else 0
            while len(self._entries) > self.capacity:
                self._drop_kv(self._entries.popitem(last=False)[1])
            for entry in self._entries.values():  # the oldest first
                if self.kv_bytes <= self.max_kv_bytes:
                    break
                self._drop_kv(entry)

    def _drop_kv(self, entry: list) -> None:
        if entry[2] is not None:
            self.kv_bytes -= entry[2].nbytes
            entry[2] = None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.kv_bytes = 0

    def versions(self) -> set[str]:
        with self._lock:
            return {entry[0] for entry in self._entries.values()}

    def __len__(self) -> int:
        return len(self._entries)
