"""Claude as the teacher: it words the conversations, the workflow decides what happens in them.

For each scenario the script (``teacher.script``: the path's branches, the slot values, the
off-script turns) fixes every turn: what the user does (and which values they give, verbatim),
and the step the agent is at. Claude gets the procedure and a persona (the fixed, cached part of
the prompt) and that plan, and writes every user message and every agent reply of the
conversation in one answer. Subterra then builds the same form as the offline teacher —
``{"node", "slots", "say"}`` with the node and slots from the script, the ``say`` from Claude —
so the training data keeps its exact labels while the language is the model's. Claude writes the
values into its replies; where one is a value the conversation holds, it becomes that slot's
``{slot}`` placeholder (``phrasing.templatize``), as in every say the student learns.

One request per conversation, so a whole corpus goes out as Message Batches (half price) or
interactively with bounded concurrency; every answer is kept as it arrives (``claude_spool``).
An answer that is no JSON, or has the wrong turns, becomes a conversation with an ``error`` that
the validation gate rejects, as it rejects one whose user message lost a value's exact spelling.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

from subterra.claude_client import Request, json_in
from subterra.claude_spool import ClaudeAnswers
from subterra.claude_user import intent
from subterra.forms import Form, parse_form, render_form
from subterra.offscript import claude_lines
from subterra.phrasing import fill, templatize
from subterra.procedure import render_procedure
from subterra.scenario import Scenario
from subterra.teacher import Conversation, Script, TemplateTeacher, script

if TYPE_CHECKING:
    from subterra.workflow import Workflow

INSTRUCTIONS = """You write training conversations for a customer-service assistant that follows a fixed procedure (below). \
Each request gives a persona for the customer and a plan: the turns of one conversation, in order. In every turn the \
customer writes a message, then the assistant answers at the turn's step.

Write every turn of the plan, in order:
- "user": the customer's message, in the persona's own voice, doing what the turn's "user" entry says. \
opener: start the conversation, no details yet. answer: reply to the assistant's last message, giving the values \
under "gives" and, when there is a "chooses", making that choice clear. """ + claude_lines("claude_teacher") + """
- Every value under "gives" appears in "user" exactly as written (the same characters, digits and capitals). \
Give no other slot values.
- "say": the assistant's reply at the turn's step, following the step's instruction: brief, warm, specific to \
what the customer just said (acknowledge the values given, re-ask after an unclear or off-topic message, confirm \
a correction). The last turn's step ends the conversation.
- The "example" fields only show the intent: write your own words.
- No placeholders in braces, no Markdown, no stage directions.

Reply with one JSON object and nothing else: {"turns": [{"user": "...", "say": "..."}, ...]}, exactly one entry \
per planned turn."""

PROCEDURE_HEADER = "The procedure the assistant follows:\n"


def plan_of(wf: Workflow, scenario: Scenario, plan: Script, example: Conversation) -> dict:
    """The turns Claude is asked to word: what the user does (``claude_user.intent``) and where the
    agent is, with the template teacher's wording of the agent's turn as an example."""
    turns = []
    for i, step in enumerate(plan.steps):
        before = plan.steps[i - 1].values if i else dict(scenario.values)
        node = wf.nodes[step.node]
        said = parse_form(example.messages[2 * i + 2]["content"]).say
        agent = {"step": step.node, "instruction": node.prompt, "example": fill(said, step.values)}
        if node.end:
            agent["ends"] = node.end
        turns.append({"turn": i + 1, "user": intent(wf, step.user, before), "agent": agent})
    return {"conversation": scenario.id, "persona": scenario.persona, "turns": turns}


def assemble(wf: Workflow, plan: Script, text: str) -> tuple[list[dict[str, str]], str | None]:
    """The conversation's messages from Claude's answer, or ``([system], why)`` if it is malformed."""
    try:
        data = json_in(text)
        turns = data.get("turns") if isinstance(data, dict) else None
        if not isinstance(turns, list):
            raise ValueError('no "turns" list')
        if len(turns) != len(plan.steps):
            raise ValueError(f"{len(turns)} turns for a plan of {len(plan.steps)}")
        for i, turn in enumerate(turns):
            if not (isinstance(turn, dict) and isinstance(turn.get("user"), str) and isinstance(turn.get("say"), str)):
                raise ValueError(f'turn {i + 1} is not {{"user": text, "say": text}}')
    except ValueError as exc:
        return [{"role": "system", "content": wf.assistant}], f"teacher output malformed: {exc}"
    messages = [{"role": "system", "content": wf.assistant}]
    for step, turn in zip(plan.steps, turns):
        messages.append({"role": "user", "content": turn["user"].strip()})
        # the values the conversation holds become {slot} placeholders, as in the template teacher's says
        held = {s: step.values[s] for s in step.known if s in step.values}
        say = templatize(turn["say"].strip(), held)
        messages.append({"role": "assistant", "content": render_form(Form(step.node, dict(step.user.slots), say))})
    return messages, None


class ClaudeTeacher:
    """Conversations worded by Claude, one request each (batch or interactive), kept as they arrive."""

    def __init__(self, answers: ClaudeAnswers, model: str, mode: str = "batch", seed: int = 0, max_tokens: int = 8192):
        self.answers = answers
        self.model = model
        self.mode = mode
        self.max_tokens = max_tokens
        self.template = TemplateTeacher(seed)
        self.name = f"claude:{model}"

    def request(self, wf: Workflow, scenario: Scenario, plan: Script) -> Request:
        example = self.template.conversation(wf, scenario)
        return Request(
            purpose="teacher",
            model=self.model,
            system=((INSTRUCTIONS, False), (PROCEDURE_HEADER + render_procedure(wf), True)),
            messages=(("user", json.dumps(plan_of(wf, scenario, plan, example), ensure_ascii=False)),),
            max_tokens=self.max_tokens,
            label=scenario.id,
        )

    def conversations(self, wf: Workflow, scenarios: Sequence[Scenario]) -> list[Conversation]:
        if not scenarios:
            return []
        plans = [script(wf, s) for s in scenarios]
        requests = [self.request(wf, s, p) for s, p in zip(scenarios, plans)]
        replies = self.answers.all(requests, self.mode)
        out = []
        for plan, request in zip(plans, requests):
            reply = replies[request.key]
            messages, error = assemble(wf, plan, reply.text)
            ok = error is None
            out.append(Conversation(
                messages,
                plan.nodes if ok else [],
                plan.edges if ok else [],
                plan.offscript if ok else [],
                tokens_in=reply.usage.tokens_in,
                tokens_out=reply.usage.output_tokens,
                usd=reply.usd,
                error=error,
            ))
        return out
