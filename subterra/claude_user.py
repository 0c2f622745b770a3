"""Claude as the simulated user: the scenario decides what the user does, Claude says it.

``ClaudeUser`` has the scripted user's interface (``opener``, ``reply(node, say)``, ``values``)
and its decisions: at every turn the ``ScriptedUser`` of the scenario picks what happens (the
branch the path takes on this visit, the values to give, an unclear or off-topic message or a
correction where the scenario has one), so scoring against the reference stays exact. Claude
words that turn for the scenario's persona, having read the conversation so far (the agent's
own replies included). A message that drops a value's exact spelling (the deployed model copies
values verbatim) is replaced by the scripted wording and counted in ``fallbacks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json

from subterra.claude_client import Request
from subterra.claude_spool import ClaudeAnswers
from subterra.offscript import claude_lines, corrects
from subterra.scenario import Scenario
from subterra.simulator import ScriptedUser, Users, UserTurn

if TYPE_CHECKING:
    from subterra.workflow import Workflow

INSTRUCTIONS = """You play a customer chatting with a company's assistant, to test the assistant. Each request \
gives your persona, what you want, the conversation so far, and what your next message must do ("now"):
opener: start the conversation, no details yet. answer: reply to the assistant's last message, giving the values \
under "gives" and, when there is a "chooses", making that choice clear. """ + claude_lines("claude_user") + """
Every value under "gives" appears in your message exactly as written (the same characters, digits and capitals). \
Give no other values. Stay in the persona's voice; one short message; the "example" only shows the intent.
Reply with the message text only: no quotes, no labels, no Markdown."""


def intent(wf: Workflow, turn: UserTurn, before: dict[str, str]) -> dict:
    """What a scripted user's turn does, for a model that words it: its kind, the values it gives
    (verbatim), the value a correction replaces (``before``: the values until now), the choice a
    branch answer makes, and the scripted wording as an example."""
    out: dict = {"kind": turn.kind}
    if turn.slots:
        out["gives"] = dict(turn.slots)
    if corrects(turn.kind):
        out["corrects"] = {s: before[s] for s in turn.slots}
    if turn.kind == "answer" and turn.edge:
        edge = next(e for e in wf.edges if e.id == turn.edge)
        if edge.kind == "branch":
            out["chooses"] = edge.when or edge.target
    out["example"] = turn.text
    return out


def goal_of(wf: Workflow, scenario: Scenario) -> dict:
    """What the user wants: the choices their path makes and their values."""
    edges = {e.id: e for e in wf.edges}
    choices = [edges[e].when or edges[e].target for e in scenario.path if edges[e].kind == "branch"]
    return {"choices": choices, "values": dict(scenario.values)}


class ClaudeUser:
    def __init__(self, wf: Workflow, scenario: Scenario, answers: ClaudeAnswers, model: str, max_tokens: int = 2048):
        self.wf = wf
        self.scenario = scenario
        self.answers = answers
        self.model = model
        self.max_tokens = max_tokens
        self.script = ScriptedUser(wf, scenario)
        self.so_far: list[dict[str, str]] = []
        self.fallbacks = 0

    @property
    def values(self) -> dict[str, str]:
        return self.script.values

    def opener(self) -> UserTurn:
        before = dict(self.script.values)
        return self._word(self.script.opener(), before)

    def reply(self, node_id: str, say: str = "") -> UserTurn | None:
        before = dict(self.script.values)
        planned = self.script.reply(node_id, say)
        if self.so_far:
            self.so_far[-1]["assistant"] = say
        if planned is None:
            return None
        return self._word(planned, before)

    def request(self, planned: UserTurn, before: dict[str, str]) -> Request:
        payload = {
            "conversation": self.scenario.id,
            "persona": self.scenario.persona,
            "wants": goal_of(self.wf, self.scenario),
            "so_far": self.so_far,
            "now": intent(self.wf, planned, before),
        }
        return Request(
            purpose="user",
            model=self.model,
            system=((INSTRUCTIONS, True),),
            messages=(("user", json.dumps(payload, ensure_ascii=False)),),
            max_tokens=self.max_tokens,
            label=f"{self.scenario.id}#{len(self.so_far) + 1}",
        )

    def _word(self, planned: UserTurn, before: dict[str, str]) -> UserTurn:
        text = self.answers.one(self.request(planned, before)).text.strip()
        if not text or not all(v in text for v in planned.slots.values()):
            text = planned.text
            self.fallbacks += 1
        self.so_far.append({"customer": text, "assistant": ""})
        return UserTurn(text, planned.kind, dict(planned.slots), planned.edge)


def claude_users(answers: ClaudeAnswers, model: str) -> Users:
    """Claude as the user of an evaluation."""
    return Users(f"claude:{model}", lambda wf, scenario: ClaudeUser(wf, scenario, answers, model))


def users_like(scenarios, setup, folder, workflow: str, say=None) -> Users:
    """The users that played ``scenarios`` (their ``user_simulator``), to play another model the same
    way: the scripted user, or Claude when ``setup`` (a ``claude_client`` setup) plays that user now;
    ``ValueError`` if it does not (the two models could not be compared on the same users)."""
    from subterra.claude_spool import answers_for
    from subterra.simulator import SCRIPTED

    simulator = scenarios["user_simulator"][0] if "user_simulator" in scenarios.columns else SCRIPTED.name
    if simulator == SCRIPTED.name:
        return SCRIPTED
    if not setup.uses("user") or simulator != f"claude:{setup.settings.user_model}":
        raise ValueError(f"the evaluation's user was {simulator}; the claude resource does not play that user now, so a "
                         "candidate could not be compared on the same users (rerun eval_scores first)")
    return claude_users(answers_for(setup, folder, workflow, say=say), setup.settings.user_model)
