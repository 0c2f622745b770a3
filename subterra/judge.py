"""Claude as the judge: the five criteria of the published evaluation, 1 to 5 per conversation.

Task success, information accuracy, consistency, graceful handling and naturalness, scored from
the procedure (the fixed, cached part of the prompt), what the user wanted, the step the
procedure should have ended at, and the evaluated conversation (every user message, the agent's
reply, the step it said it was at and the values it captured). A second judge model, when
configured, scores the same conversations again (the published check with a different judge).

Scores land beside the objective ones: per conversation in ``eval_scenarios`` (``judge_<criterion>``,
``judge_mean``, ``judge_model``, ``judge_error``; ``judge2_*`` for the second judge), their means
per route and holdout in ``eval_scores``. A judge answer that is not the JSON asked for leaves
that conversation's scores empty, with the reason in ``judge_error``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json

import polars as pl

from subterra.claude_client import Request, json_in
from subterra.claude_spool import ClaudeAnswers
from subterra.claude_user import goal_of
from subterra.procedure import render_procedure
from subterra.scenario import Scenario

if TYPE_CHECKING:
    from subterra.workflow import Workflow

CRITERIA = ("task_success", "information_accuracy", "consistency", "graceful_handling", "naturalness")
PREFIXES = ("judge_", "judge2_")  # the first judge, the second

INSTRUCTIONS = """You judge conversations between a customer and a company's assistant that must follow a fixed \
procedure (below). Each request gives what the customer wanted, the step at which the procedure should have ended, \
and the conversation: every customer message, then the assistant's reply, the step the assistant said it was at \
and the values it captured from that message.

Score the assistant on each criterion from 1 (very poor) to 5 (excellent):
- task_success: the conversation reached the outcome the customer wanted, through the procedure's steps.
- information_accuracy: the values captured and repeated are exactly what the customer said; nothing invented.
- consistency: the assistant kept to the procedure's order, neither skipping nor repeating steps, never \
contradicting itself.
- graceful_handling: unclear messages, off-topic questions and corrections were handled helpfully and the \
conversation returned to the procedure (5 if there were none and nothing went wrong).
- naturalness: the replies read like a competent, friendly human agent: clear, brief, not robotic.

Reply with one JSON object and nothing else: {"task_success": n, "information_accuracy": n, "consistency": n, \
"graceful_handling": n, "naturalness": n, "rationale": "one sentence"}"""

PROCEDURE_HEADER = "The procedure the assistant must follow:\n"


def judge_request(wf: Workflow, row: dict, scenario: Scenario, expected_end: str, model: str, max_tokens: int = 4096) -> Request:
    """The request that judges one evaluated conversation (a row of ``eval_scenarios``)."""
    turns = [
        {"customer": t.get("user", ""), "assistant": t["say"], "step": t["node"], "captured": t["slots"]}
        for t in json.loads(row["transcript"])
    ]
    payload = {
        "conversation": f"{row['route']}/{row['scenario_id']}",
        "customer_wanted": goal_of(wf, scenario),
        "expected_end": expected_end,
        "ended": bool(row.get("ended", not row["failed"])),
        "turns": turns,
    }
    return Request(
        purpose="judge",
        model=model,
        system=((INSTRUCTIONS, False), (PROCEDURE_HEADER + render_procedure(wf), True)),
        messages=(("user", json.dumps(payload, ensure_ascii=False)),),
        max_tokens=max_tokens,
        label=payload["conversation"],
    )


def read_scores(text: str) -> dict[str, int]:
    """The five scores of a judge's answer; ``ValueError`` if it is not the JSON asked for."""
    data = json_in(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    scores = {}
    for c in CRITERIA:
        value = data.get(c)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise ValueError(f"{c} is {value!r}, not an integer from 1 to 5")
        scores[c] = value
    return scores


def judge_scenarios(answers: ClaudeAnswers, wf: Workflow, scenarios: pl.DataFrame, references: pl.DataFrame,
                    models: list[str]) -> pl.DataFrame:
    """``scenarios`` (rows of ``eval_scenarios``, any route) with the judges' columns added.

    ``references`` are the corpus rows the scenarios were played from (``conversation_id`` =
    ``scenario_id``): the scenario and the step the reference conversation ended at."""
    by_id = {r["conversation_id"]: r for r in references.iter_rows(named=True)}
    rows = list(scenarios.iter_rows(named=True))
    columns: dict[str, list] = {}
    for prefix, model in zip(PREFIXES, models):
        requests = []
        for row in rows:
            ref = by_id[row["scenario_id"]]
            expected_end = [m for m in json.loads(ref["messages"]) if m["role"] == "assistant"][-1]["content"]
            requests.append(judge_request(wf, row, Scenario.from_json(ref["scenario"]), json.loads(expected_end)["node"], model))
        replies = answers.all(requests, "interactive")
        columns[f"{prefix}model"] = [model] * len(rows)
        for c in CRITERIA + ("mean", "error", "usd"):
            columns[f"{prefix}{c}"] = []
        for request in requests:
            reply = replies[request.key]
            try:
                scores, error = read_scores(reply.text), None
            except ValueError as exc:
                scores, error = {}, f"judge output malformed: {exc}"
            for c in CRITERIA:
                columns[f"{prefix}{c}"].append(scores.get(c))
            columns[f"{prefix}mean"].append(sum(scores.values()) / len(CRITERIA) if scores else None)
            columns[f"{prefix}error"].append(error)
            columns[f"{prefix}usd"].append(reply.usd)
    types = {"model": pl.String, "mean": pl.Float64, "error": pl.String, "usd": pl.Float64}
    return scenarios.with_columns(
        [pl.Series(name, values, dtype=types.get(name.split("_", 1)[1], pl.Int64)) for name, values in columns.items()]
    )


def judge_aggregates(part: pl.DataFrame) -> dict:
    """Means of the judged columns of a route x holdout (nothing if it was not judged)."""
    out: dict = {}
    for prefix in PREFIXES:
        if f"{prefix}mean" not in part.columns or part[f"{prefix}mean"].null_count() == part.height:
            continue
        out[f"{prefix}model"] = part[f"{prefix}model"][0]
        out[f"{prefix}judged"] = part.height - part[f"{prefix}mean"].null_count()
        for c in CRITERIA + ("mean",):
            out[f"{prefix}{c}"] = float(part[f"{prefix}{c}"].mean())
    if "judge_mean" in out and "judge2_mean" in out:  # how often the two judges are within a point
        pairs = [(a, b) for c in CRITERIA for a, b in zip(part[f"judge_{c}"], part[f"judge2_{c}"]) if a is not None and b is not None]
        out["judges_within_one"] = sum(abs(a - b) <= 1 for a, b in pairs) / len(pairs) if pairs else None
    return out
