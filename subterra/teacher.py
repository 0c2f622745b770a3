"""Teachers write the training conversations: every assistant turn a form, every user turn a reply.

``TemplateTeacher`` is the offline, deterministic default: it plays the agent from each node's
``say`` lines (or its prompt), acknowledges captured values, re-asks after an unclear or off-topic
message and confirms corrections; the user side is the ``ScriptedUser`` of the scenario. Seeded:
the same workflow, scenario and seed give the same conversation, byte for byte.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from subterra import phrasing as ph
from subterra.forms import Form, render_form
from subterra.scenario import Scenario
from subterra.simulator import ScriptedUser, UserTurn

MAX_TURNS_FACTOR = 3  # a guard against a runaway conversation: 3 x (path length + 1) assistant turns


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    nodes: list[str] = field(default_factory=list)  # the node of every assistant turn
    edges: list[str] = field(default_factory=list)  # the edges the user's answers took
    offscript: list[str] = field(default_factory=list)  # off-script kinds, in order


class Teacher(Protocol):
    name: str

    def conversation(self, wf, scenario: Scenario) -> Conversation: ...


def agent_line(wf, node_id: str, values: dict[str, str], known: set[str], rng: random.Random) -> str:
    """One of the node's say lines whose placeholders are all known; the prompt if there is none."""
    node = wf.nodes[node_id]
    usable = [s for s in node.say if all(p in known for p in ph.placeholders(s))]
    if not usable:
        return node.prompt
    return ph.fill(rng.choice(usable), values)


class TemplateTeacher:
    """Offline teacher: renders the agent's turns from the workflow's own texts."""

    name = "template"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def conversation(self, wf, scenario: Scenario) -> Conversation:
        rng = random.Random(scenario.seed ^ (self.seed * 0x9E3779B1) ^ 0xA6E47)
        user = ScriptedUser(wf, scenario)
        turn: UserTurn = user.opener()
        messages = [{"role": "system", "content": wf.assistant}, {"role": "user", "content": turn.text}]
        conv = Conversation(messages)
        node_id = wf.start
        known: set[str] = set()
        limit = MAX_TURNS_FACTOR * (len(scenario.path) + 1)
        while True:
            known |= set(turn.slots)
            say = agent_line(wf, node_id, user.values, known, rng)
            prefix = ""
            if turn.kind == "unclear":
                prefix = rng.choice(ph.AGENT_UNCLEAR)
            elif turn.kind == "offtopic":
                prefix = rng.choice(ph.AGENT_OFF_TOPIC)
            elif turn.kind == "correction":
                prefix = ph.fill(rng.choice(ph.AGENT_CORRECTION), {"new": next(iter(turn.slots.values()))})
            elif turn.slots:
                prefix = rng.choice(ph.AGENT_ACKS)
            text = f"{prefix} {say}".strip()
            messages.append({"role": "assistant", "content": render_form(Form(node_id, dict(turn.slots), text))})
            conv.nodes.append(node_id)
            if len(conv.nodes) > limit:
                raise RuntimeError(f"{wf.id}: scenario {scenario.id} does not terminate")
            turn = user.reply(node_id)
            if turn is None:
                return conv
            messages.append({"role": "user", "content": turn.text})
            if turn.kind == "answer":
                conv.edges.append(turn.edge)
                node_id = next(e.target for e in wf.out_edges(node_id) if e.id == turn.edge)
            else:
                conv.offscript.append(turn.kind)
