"""The scripted user: plays a scenario against whatever agent it talks to.

It answers the step the agent is *actually* at (so a derailed agent stays derailed instead of
being papered over): at a decision point it takes the branch its scenario takes on that visit,
at a step that collects slots it provides its values, verbatim, in one of the step's phrasings.
Where its scenario says so it goes off-script first (``subterra.offscript``): an unclear answer,
an off-topic question, or a correction of a value it gave earlier.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from subterra import phrasing as ph
from subterra.offscript import CONFUSED, KINDS, OffScript
from subterra.scenario import Scenario, visit_key

if TYPE_CHECKING:
    from subterra.workflow import Workflow


@dataclass(frozen=True)
class UserTurn:
    text: str
    kind: str  # opener | answer | an off-script kind (subterra.offscript.KINDS)
    slots: dict[str, str] = field(default_factory=dict)  # what this message provides, verbatim
    edge: str | None = None  # the edge an answer takes
    more_edges: tuple[str, ...] = ()  # a first message answering several steps: the edges after ``edge``


class ScriptedUser:
    def __init__(self, wf: Workflow, scenario: Scenario):
        self.wf = wf
        self.scenario = scenario
        self.rng = random.Random(scenario.seed ^ 0x5EED5EED)
        self.values = dict(scenario.values)
        self.provided: list[str] = []
        self.visits: dict[str, int] = {}
        self.pending = dict(scenario.offscript)
        self.choices = scenario.choices(wf)
        self._last: UserTurn | None = None
        self._typing = random.Random(scenario.seed ^ 0x7E1D)  # its own draws: noise 0 leaves every other draw as it was
        self._last_node: str | None = None

    # -- helpers -------------------------------------------------------------------------
    def _pool(self, lines) -> tuple[str, ...]:
        return ph.phrasing_pool(lines, self.scenario.phrasing)

    def _decorate(self, text: str) -> str:
        prefixes, suffixes = ph.decorations(self.scenario.phrasing)
        prefix = self.rng.choice(prefixes)
        if prefix and text[:1].isupper() and not text.startswith(("I ", "I'")) and text[1:2].islower():
            text = text[0].lower() + text[1:]
        return prefix + text + self.rng.choice(suffixes)

    def _turn(self, turn: UserTurn, node: str | None) -> UserTurn:
        self._last, self._last_node = turn, node
        return turn

    # -- the conversation ----------------------------------------------------------------
    def opener(self) -> UserTurn:
        """The first message: a bare greeting, or (a scenario that opens with the request) the
        start step's answer, after a greeting half the time; its ``edge`` then says where it leads.
        A scenario's ``opening_steps`` answers that many steps in it, one after the other ("I'm Ana
        Ruiz. My invoice is wrong."; ``more_edges``)."""
        greeting = self.rng.choice(self._pool(ph.OPENERS))
        if getattr(self.scenario, "opening", "greeting") != "request":
            return self._turn(UserTurn(greeting, "opener"), None)
        start = self.wf.nodes[self.wf.start]
        self.visits[start.id] = 1
        answer = self._answer(start, visit_key(start.id, 1))
        text = f"{greeting} {answer.text}" if self.rng.random() < 0.5 else answer.text
        slots, edges, at = dict(answer.slots), [answer.edge], start.id
        for _ in range(getattr(self.scenario, "opening_steps", 1) - 1):
            node = self.wf.nodes[next(e.target for e in self.wf.out_edges(at) if e.id == edges[-1])]
            if node.is_terminal:
                break
            self.visits[node.id] = self.visits.get(node.id, 0) + 1
            more = self._answer(node, visit_key(node.id, self.visits[node.id]))
            text, at = f"{text} {more.text}", node.id
            slots.update(more.slots)
            edges.append(more.edge)
        return self._turn(UserTurn(text, "answer", slots, edges[0], tuple(edges[1:])), at)

    def reply(self, node_id: str, say: str = "") -> UserTurn | None:
        """The user's message after the agent's turn at ``node_id``; None after a terminal node.
        (``say``, what the agent told the user, matters to a simulator that reads it; not to this one.)"""
        node = self.wf.nodes.get(node_id)
        if node is None:  # an agent that names no real step gets a confused user
            return self._turn(self._offscript(CONFUSED), node_id)
        repeat = self._last is not None and self._last.kind in KINDS and node_id == self._last_node
        if not repeat:
            self.visits[node_id] = self.visits.get(node_id, 0) + 1
        if node.is_terminal:
            return None
        key = visit_key(node_id, self.visits.get(node_id, 1))
        kind = None if repeat else KINDS.get(self.pending.pop(key, None))
        if kind is not None:  # a planned correction with nothing left to correct: confused instead
            return self._turn(self._offscript(kind) or self._offscript(CONFUSED), node_id)
        return self._turn(self._answer(node, key), node_id)

    def _offscript(self, kind: OffScript) -> UserTurn | None:
        if kind.corrects:
            return self._correction(kind)
        return UserTurn(self.rng.choice(self._pool(kind.user_lines)), kind.name)

    def _answer(self, node, key: str) -> UserTurn:
        out_edges = self.wf.out_edges(node.id)
        if node.branches:
            edge_id = self.choices.get(key)
            edge = next((e for e in out_edges if e.id == edge_id), None)
            if edge is None:  # off the scenario's path: a fixed, seeded choice
                edge = out_edges[random.Random(f"{self.scenario.seed}|{key}").randrange(len(out_edges))]
            lines, collect = edge.user, tuple(node.collect) + tuple(edge.collect)
        else:
            edge = out_edges[0]
            lines, collect = node.user, tuple(node.collect)
        if not lines:
            lines = (" ".join("{%s}" % s for s in collect) + ".",) if collect else ph.ACKNOWLEDGEMENTS
        template = self.rng.choice(self._pool(lines))
        decorated, shown, values = self._decorate(template), self.values, self.values  # as written, as the form holds them
        if self.scenario.noise and self._typing.random() < self.scenario.noise:
            from subterra.noise import perturb

            decorated, shown = perturb(decorated, self.values, self._typing)
            # a copied value is held as typed; a chosen one (enum, yes/no) stays the declared value
            values = {k: v if self.wf.slots[k].type in ("enum", "boolean") else shown[k] for k, v in self.values.items()}
        slots = {s: values[s] for s in collect if ph.uses(template, s)}
        for s in slots:
            if s not in self.provided:
                self.provided.append(s)
        text = ph.fill(decorated, shown)
        return UserTurn(text, "answer", slots, edge.id)

    def _correction(self, kind: OffScript) -> UserTurn | None:
        # a slot whose value another given slot shares ("2" travellers, "2" bags) cannot be
        # corrected unambiguously by naming its old value
        candidates = [
            s for s in self.provided
            if self.scenario.corrections.get(s, self.values[s]) != self.values[s]
            and not any(o != s and self.values[o] == self.values[s] for o in self.provided)
        ]
        if not candidates:
            return None
        slot = self.rng.choice(candidates)
        old, new = self.values[slot], self.scenario.corrections[slot]
        self.values[slot] = new
        template = self.rng.choice(self._pool(kind.user_lines))
        return UserTurn(ph.fill(template, {"old": old, "new": new}), kind.name, {slot: new})


@dataclass(frozen=True)
class Users:
    """Who plays the user in an evaluation: a name for the tables, and ``make(wf, scenario)``."""

    name: str = "scripted"
    make: Callable = ScriptedUser


SCRIPTED = Users()
