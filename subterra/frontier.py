"""The frontier route: Claude with the whole procedure in its context, on the compiled model's holdout.

The in-context baseline the compiled model is measured against: on every turn Claude is sent the
procedure (``render_procedure``, a cached system block) and the conversation so far, and answers
with the same form the compiled model fills. The same held-out scenarios are played by the same
user (scripted, or Claude) and scored by the same ``evaluation.score`` against the same reference,
so the two routes sit side by side in ``eval_scenarios`` / ``eval_scores`` (route ``frontier``),
with the tokens and dollars measured from Claude's answers.

``versus_frontier`` adds to every route's row the share of the frontier's quality it reaches on
the same holdout: judged (``pct_of_frontier_quality``, the mean of the five judge criteria) and
objective (``pct_of_frontier_strict_pass``).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

import polars as pl

from subterra.claude_client import Request, json_in
from subterra.claude_spool import ClaudeAnswers
from subterra.evaluation import EvalConfig, EvalResult, Transcript, aggregate, score, select_sets
from subterra.forms import Form, user_say
from subterra.procedure import render_procedure
from subterra.routes import FRONTIER_ROUTE
from subterra.runtime.turns import TurnRecord
from subterra.scenario import Scenario
from subterra.simulator import SCRIPTED, Users

if TYPE_CHECKING:
    from subterra.workflow import Workflow

ROUTE = FRONTIER_ROUTE
FORM_ONLY = "\nReply with the JSON form only, nothing else."


def frontier_request(wf: Workflow, history: list[tuple[str, str]], model: str, label: str, max_tokens: int = 4096) -> Request:
    return Request(
        purpose="frontier",
        model=model,
        system=((render_procedure(wf) + FORM_ONLY, True),),
        messages=tuple(history),
        max_tokens=max_tokens,
        label=label,
    )


def read_form(text: str) -> Form | None:
    """The form in a frontier answer (keys in any order, a code fence allowed); None if there is none."""
    try:
        data = json_in(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    node, slots, say = data.get("node"), data.get("slots", {}), data.get("say", "")
    if not isinstance(node, str) or not isinstance(say, str) or not isinstance(slots, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in slots.items()):
        return None
    return Form(node, slots, say)


def play(answers: ClaudeAnswers, wf: Workflow, row: dict, config: EvalConfig, model: str, users: Users) -> dict:
    """One held-out scenario with Claude as the agent; its scored row."""
    scenario = Scenario.from_json(row["scenario"])
    reference = json.loads(row["messages"])
    max_turns = sum(1 for m in reference if m["role"] == "assistant") + config.extra_turns
    transcript = Transcript(scenario.id)
    user = users.make(wf, scenario)
    turn = user.opener()
    history: list[tuple[str, str]] = []
    held: dict[str, str] = {}  # as for every route, a say's {slot} is filled from the values held
    usd = 0.0
    while len(transcript.turns) < max_turns:
        history.append(("user", turn.text))
        transcript.heard(turn)
        reply = answers.one(frontier_request(wf, history, model, f"{scenario.id}#{len(transcript.turns) + 1}"))
        usd += reply.usd
        form = read_form(reply.text)
        held.update(form.slots if form else {})
        node = wf.nodes.get(form.node) if form else None
        say, complete = user_say(form.say, held, node.say if node else ()) if form else (reply.text, False)
        transcript.turns.append(TurnRecord(
            node=form.node if form else "", slots=dict(form.slots) if form else {}, say=say,
            raw=reply.text, valid=form is not None and form.node in wf.nodes and complete,
            tokens_in=reply.usage.tokens_in, tokens_out=reply.usage.output_tokens, latency_s=reply.seconds,
        ))
        history.append(("assistant", reply.text or "(no reply)"))
        turn = user.reply(transcript.turns[-1].node, transcript.turns[-1].say)
        transcript.user_fallbacks = getattr(user, "fallbacks", 0)
        if turn is None:
            transcript.ended = True
            break
    scored = score(wf, scenario, reference, transcript, route=ROUTE)
    scored.update(path_id=row["path_id"], truncated=False, user_simulator=users.name, usd=usd)
    return scored


def evaluate_frontier(
    answers: ClaudeAnswers,
    wf: Workflow,
    rows: pl.DataFrame,
    model: str,
    config: EvalConfig = EvalConfig(),
    users: Users = SCRIPTED,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """The frontier route on the holdout rows of the corpus table ``rows`` (the scenarios the
    compiled route plays), conversations side by side up to the client's concurrency."""
    selected = select_sets(rows, config)
    results = []
    with ThreadPoolExecutor(max_workers=answers.client.settings.concurrency, thread_name_prefix="frontier") as pool:
        for scored in pool.map(lambda r: play(answers, wf, r, config, model, users), selected):
            results.append(scored)
            if progress is not None:
                progress(len(results), len(selected))
    frame = pl.DataFrame(results, infer_schema_length=None).sort(["set", "scenario_id"])
    return EvalResult(scenarios=frame, scores=aggregate(frame))


def versus_frontier(scores: pl.DataFrame) -> pl.DataFrame:
    """``eval_scores`` with each row's share (%) of the frontier route's quality on the same holdout."""
    frontier = {r["set"]: r for r in scores.filter(pl.col("route") == ROUTE).iter_rows(named=True)}

    def share(row: dict, column: str) -> float | None:
        base = frontier.get(row["set"], {}).get(column)
        value = row.get(column)
        return 100.0 * value / base if value is not None and base else None

    rows = list(scores.iter_rows(named=True))
    return scores.with_columns(
        pl.Series("pct_of_frontier_quality", [share(r, "judge_mean") for r in rows], dtype=pl.Float64),
        pl.Series("pct_of_frontier_strict_pass", [share(r, "strict_pass") for r in rows], dtype=pl.Float64),
    )
