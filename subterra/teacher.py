"""Teachers write the training conversations: every assistant turn a form, every user turn a reply.

``TemplateTeacher`` is the offline, deterministic default: it plays the agent from each node's
``say`` lines (or its prompt), acknowledges captured values, re-asks after an unclear or off-topic
message and confirms corrections; the user side is the ``ScriptedUser`` of the scenario. Seeded:
the same workflow, scenario and seed give the same conversation, byte for byte.

The agent's ``say`` is a *template*: a value the conversation holds appears as its ``{slot}``
placeholder ("Where will you fly to {destination} from?"), and the runtime fills it in before the
user reads it (``subterra.forms.shown_say``). The student learns what to say, never to retype a
value from turns ago (which a small model gets wrong: "flying to Athens" for Buenos Aires), and
its own earlier turns hold no misspelt values to mislead it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence

from subterra import phrasing as ph
from subterra.forms import Form, render_form
from subterra.offscript import KINDS
from subterra.scenario import Scenario
from subterra.simulator import ScriptedUser, UserTurn

if TYPE_CHECKING:
    from subterra.workflow import Workflow

MAX_TURNS_FACTOR = 3  # a guard against a runaway conversation: 3 x (path length + 1) assistant turns


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    nodes: list[str] = field(default_factory=list)  # the node of every assistant turn
    edges: list[str] = field(default_factory=list)  # the edges the user's answers took
    offscript: list[str] = field(default_factory=list)  # off-script kinds, in order
    tokens_in: int = 0  # what writing it cost (a teacher that calls a model)
    tokens_out: int = 0
    usd: float = 0.0
    error: str | None = None  # why the teacher's output could not be made a conversation


class Teacher(Protocol):
    name: str

    def conversations(self, wf: Workflow, scenarios: Sequence[Scenario]) -> list[Conversation]: ...


@dataclass(frozen=True)
class Step:
    """One exchange of a scenario's conversation: the user's message, then the agent's turn at ``node``."""

    user: UserTurn
    node: str
    values: dict[str, str]  # the user's slot values as of this message (after any correction)
    known: frozenset[str]  # the slots the user has given so far


@dataclass
class Script:
    """What happens in a scenario's conversation, before anyone words the agent's turns."""

    steps: list[Step]
    edges: list[str]
    offscript: list[str]

    @property
    def nodes(self) -> list[str]:
        return [s.node for s in self.steps]


def script(wf: Workflow, scenario: Scenario) -> Script:
    """The scenario played by its scripted user against an agent that follows the workflow."""
    user = ScriptedUser(wf, scenario)
    turn: UserTurn = user.opener()
    node_id = wf.start
    known: set[str] = set()
    steps: list[Step] = []
    edges: list[str] = []
    offscript: list[str] = []
    if turn.edge is not None:  # the first message is the request: the agent's first turn is the step it leads to
        for edge in (turn.edge, *turn.more_edges):
            edges.append(edge)
            node_id = next(e.target for e in wf.out_edges(node_id) if e.id == edge)
    limit = MAX_TURNS_FACTOR * (len(scenario.path) + 1)
    while True:
        known |= set(turn.slots)
        steps.append(Step(turn, node_id, dict(user.values), frozenset(known)))
        if len(steps) > limit:
            raise RuntimeError(f"{wf.id}: scenario {scenario.id} does not terminate")
        turn = user.reply(node_id)
        if turn is None:
            return Script(steps, edges, offscript)
        if turn.kind == "answer":
            edges.append(turn.edge)
            node_id = next(e.target for e in wf.out_edges(node_id) if e.id == turn.edge)
        else:
            offscript.append(turn.kind)


def agent_line(wf: Workflow, node_id: str, known: set[str], rng: random.Random) -> str:
    """One of the node's say lines whose placeholders are all known, as written (a template: the
    runtime fills ``{slot}`` from the values the conversation holds); the prompt if there is none."""
    node = wf.nodes[node_id]
    usable = [s for s in node.say if all(p in known for p in ph.placeholders(s))]
    if not usable:
        return node.prompt.replace("{", "{{").replace("}", "}}")
    return rng.choice(usable)


def opened(opening: str, line: str) -> str:
    """The step's ``line`` after ``opening``, or alone when they start with the same word: the runtime
    never says "Great. Great choice." (training keeps such pairs: a corpus without them trained a
    weaker student, docs/experiments.md)."""
    first = [re.match(r"\W*(\w*)", t).group(1).casefold() for t in (opening, line)]
    return line if first[0] and first[0] == first[1] else f"{opening} {line}".strip()


def say_openings(corrected: Sequence[str] = (), asks_again: bool = True) -> tuple[str, ...]:
    """Every way the template teacher opens a say before the step's line: nothing, an
    acknowledgement, an off-script kind's reply (only on a say ``asks_again``, as the teacher says
    them: "Let me rephrase." before the same question), or a correction's naming the corrected slot."""
    kinds = [k for k in KINDS.values() if not k.corrects] if asks_again else []
    corrections = [ph.fill(line, {"new": "{%s}" % slot}) for k in KINDS.values() if k.corrects
                   for line in getattr(ph, k.agent_lines) for slot in corrected]
    return tuple(dict.fromkeys([*ph.AGENT_ACKS, *(line for k in kinds for line in getattr(ph, k.agent_lines)),
                                *corrections]))


class TemplateTeacher:
    """Offline teacher: renders the agent's turns from the workflow's own texts."""

    name = "template"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def conversations(self, wf: Workflow, scenarios: Sequence[Scenario]) -> list[Conversation]:
        return [self.conversation(wf, s) for s in scenarios]

    def conversation(self, wf: Workflow, scenario: Scenario) -> Conversation:
        rng = random.Random(scenario.seed ^ (self.seed * 0x9E3779B1) ^ 0xA6E47)
        plan = script(wf, scenario)
        messages = [{"role": "system", "content": wf.assistant}]
        for step in plan.steps:
            turn = step.user
            messages.append({"role": "user", "content": turn.text})
            say = agent_line(wf, step.node, set(step.known), rng)
            prefix = ""
            if turn.kind in KINDS:
                prefix = KINDS[turn.kind].agent_prefix(turn.slots, rng)
            elif turn.slots:
                prefix = rng.choice(ph.AGENT_ACKS)
            text = f"{prefix} {say}".strip()
            messages.append({"role": "assistant", "content": render_form(Form(step.node, dict(turn.slots), text))})
        return Conversation(messages, plan.nodes, plan.edges, plan.offscript)
