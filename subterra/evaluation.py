"""Evaluation: held-out scenarios replayed against every route, scored objectively.

Each held-out scenario is played by its user (the scripted one, or Claude in the scenario's
persona: ``Users``) against each route (``subterra.routes``): the same users, the same scenarios,
for every route. The user answers the step the model is actually at, so a derailment shows. The
teacher's conversation for the same scenario is the reference; every assistant turn is compared
with it. ``score`` scores any route's transcript the same way (the frontier route's too:
``subterra.frontier``). A model-played user is called inside the lockstep, one message at a time.

Per scenario and route: strict pass (every step, every slot value and every form right), partial
credit (share of reference steps the model took at the same turn), slot accuracy, form validity,
graceful handling (off-script turns answered at the right step, corrections captured), failure
(the conversation did not end at the reference's terminal step), where it first went wrong
(``first_error``: turn, node, the edge the user's answer took, off-script kind, slots), tokens
in/out and per-turn latency. Aggregates per route x holdout (with the judge's scores when a judge
scored the conversations: ``subterra.judge``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import polars as pl

from subterra.forms import parse_form
from subterra.judge import judge_aggregates
from subterra.routes import DEPLOYED, ROUTES, Episode, PlayConfig, Route, Transcript
from subterra.scenario import Scenario
from subterra.simulator import SCRIPTED, Users

ROUTE = DEPLOYED  # the route a transcript is scored as unless told
HOLDOUTS = ("holdout", "test_unseen")
__all__ = ["EvalConfig", "EvalResult", "Transcript", "aggregate", "evaluate", "score", "select_holdout"]


@dataclass(frozen=True)
class EvalConfig(PlayConfig):
    scenarios: int = 200  # per holdout
    extra_turns: int = 4  # a derailed conversation may run this many turns past the reference
    holdouts: tuple[str, ...] = HOLDOUTS
    routes: tuple[str, ...] = ROUTES

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EvalConfig":
        data = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class EvalResult:
    scenarios: pl.DataFrame
    scores: pl.DataFrame


def select_holdout(rows: pl.DataFrame, config: EvalConfig) -> list[dict]:
    """The first ``config.scenarios`` conversations of each holdout (by id): every route plays these."""
    selected = []
    for holdout in config.holdouts:
        part = rows.filter(pl.col("split") == holdout).sort("conversation_id").head(config.scenarios)
        selected.extend(part.iter_rows(named=True))
    return selected


def score(wf, scenario: Scenario, reference: list[dict], transcript: Transcript, route: str = ROUTE) -> dict:
    expected = [parse_form(m["content"]) for m in reference if m["role"] == "assistant"]
    got = transcript.turns
    n = len(expected)
    steps_right = sum(1 for i in range(min(n, len(got))) if got[i].node == expected[i].node)
    slot_total = sum(len(f.slots) for f in expected)
    slot_right = sum(
        1
        for i, f in enumerate(expected)
        for s, v in f.slots.items()
        if i < len(got) and got[i].slots.get(s) == v
    )
    strict = (
        len(got) == n
        and transcript.ended
        and all(g.valid and g.node == e.node and g.slots == e.slots for g, e in zip(got, expected))
    )
    off_total = off_right = 0
    for i, kind in enumerate(transcript.user_kinds):
        if kind in ("unclear", "offtopic", "correction") and i < len(got) and i > 0:
            off_total += 1
            stayed = got[i].node == got[i - 1].node
            captured = kind != "correction" or got[i].slots == transcript.user_slots[i]
            off_right += int(stayed and captured)
    first_error = None
    for i in range(max(n, len(got))):
        e = expected[i] if i < n else None
        g = got[i] if i < len(got) else None
        if e is None or g is None or g.node != e.node or g.slots != e.slots or not g.valid:
            wrong = sorted(k for k in set(e.slots) | set(g.slots) if e.slots.get(k) != g.slots.get(k)) if e and g else []
            first_error = {
                "turn": i,
                "expected_node": e.node if e else None,
                "got_node": g.node if g else None,
                "expected_slots": e.slots if e else None,
                "got_slots": g.slots if g else None,
                "user_kind": transcript.user_kinds[i] if i < len(transcript.user_kinds) else None,
                "edge": transcript.user_edges[i] if i < len(transcript.user_edges) else None,
                "slot": ",".join(wrong) or None,
                "kind": _error_kind(e, g),
            }
            break
    final_expected = expected[-1].node
    failed = not (transcript.ended and got and got[-1].node == final_expected)
    return {
        "workflow": wf.id,
        "route": route,
        "set": scenario.split,
        "scenario_id": scenario.id,
        "path_id": None,
        "truncated": transcript.truncated,
        "strict_pass": bool(strict),
        "partial_credit": steps_right / n,
        "slot_right": slot_right,
        "slot_total": slot_total,
        "forms_valid": sum(1 for g in got if g.valid),
        "turns": len(got),
        "reference_turns": n,
        "offscript_right": off_right,
        "offscript_total": off_total,
        "failed": bool(failed),
        "ended": bool(transcript.ended),
        "user_fallbacks": transcript.user_fallbacks,
        "tokens_in": sum(g.tokens_in for g in got),
        "tokens_out": sum(g.tokens_out for g in got),
        "latencies_ms": [round(g.latency_s * 1000, 3) for g in got],
        "first_error": json.dumps(first_error) if first_error else None,
        "transcript": json.dumps(
            [{"user_kind": k, "user": u, "node": g.node, "slots": g.slots, "say": g.say}
             for k, u, g in zip(transcript.user_kinds, transcript.user_texts, got)]
        ),
    }


def _error_kind(e, g) -> str:
    if g is None:
        return "ended_early"
    if e is None:
        return "ran_on"
    if not g.valid:
        return "invalid_form"
    if g.node != e.node:
        return "wrong_node"
    return "wrong_slot"


def aggregate(rows: pl.DataFrame) -> pl.DataFrame:
    out = []
    for (workflow, route, holdout), part in rows.group_by(["workflow", "route", "set"], maintain_order=True):
        latencies = [x for lst in part["latencies_ms"] for x in lst]
        slot_total = int(part["slot_total"].sum())
        off_total = int(part["offscript_total"].sum())
        out.append(
            {
                "workflow": workflow,
                "route": route,
                "set": holdout,
                "scenarios": part.height,
                "strict_pass": float(part["strict_pass"].mean()),
                "partial_credit": float(part["partial_credit"].mean()),
                "slot_accuracy": int(part["slot_right"].sum()) / slot_total if slot_total else None,
                "form_validity": int(part["forms_valid"].sum()) / max(1, int(part["turns"].sum())),
                "graceful_handling": int(part["offscript_right"].sum()) / off_total if off_total else None,
                "failure_rate": float(part["failed"].mean()),
                "tokens_in": float(part["tokens_in"].mean()),
                "tokens_out": float(part["tokens_out"].mean()),
                "latency_p50_ms": _quantile(latencies, 0.5),
                "latency_p95_ms": _quantile(latencies, 0.95),
                "usd_per_conversation": float(part["usd"].mean()) if "usd" in part.columns and part["usd"].null_count() < part.height else None,
                "user_simulator": part["user_simulator"][0] if "user_simulator" in part.columns else SCRIPTED.name,
                "user_fallbacks": int(part["user_fallbacks"].sum()) if "user_fallbacks" in part.columns else 0,
                **judge_aggregates(part),
            }
        )
    return pl.DataFrame(out)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return float(values[min(len(values) - 1, int(q * len(values)))])


def episodes(rows: pl.DataFrame, config: EvalConfig) -> tuple[list[Episode], list[str]]:
    """The held-out scenarios to play (``select_holdout``: the first ``config.scenarios`` of each
    holdout) and their path ids."""
    out, path_ids = [], []
    for row in select_holdout(rows, config):
        reference = json.loads(row["messages"])
        n_ref = sum(1 for m in reference if m["role"] == "assistant")
        out.append(Episode(Scenario.from_json(row["scenario"]), reference, n_ref + config.extra_turns))
        path_ids.append(row["path_id"])
    return out, path_ids


def evaluate(
    routes: Sequence[Route],
    wf,
    rows: pl.DataFrame,
    config: EvalConfig = EvalConfig(),
    progress: Callable[[str, int, int], None] | None = None,
    users: Users = SCRIPTED,
) -> EvalResult:
    """Evaluate every route on the same holdout scenarios of the corpus table ``rows``, with
    ``users`` playing the user (the scripted user unless told)."""
    chosen, path_ids = episodes(rows, config)
    results = []
    for route in routes:
        report = (lambda done, total, name=route.name: progress(name, done, total)) if progress else None
        transcripts = route.play(wf, chosen, config, report, users=users)
        for episode, pid, transcript in zip(chosen, path_ids, transcripts):
            scored = score(wf, episode.scenario, episode.reference, transcript, route=route.name)
            scored["path_id"] = pid
            scored["user_simulator"] = users.name
            results.append(scored)
    frame = pl.DataFrame(results).sort(["route", "set", "scenario_id"])
    return EvalResult(scenarios=frame, scores=aggregate(frame))


def failure_summary(scenarios: pl.DataFrame) -> pl.DataFrame:
    """Where the failed scenarios first went wrong: route x holdout x kind x step, with counts."""
    rows = []
    for route, holdout, first_error in scenarios.filter(~pl.col("strict_pass")).select("route", "set", "first_error").iter_rows():
        error = json.loads(first_error) if first_error else {"kind": "unknown", "expected_node": None}
        rows.append({"route": route, "set": holdout, "kind": error["kind"], "step": error.get("expected_node") or error.get("got_node")})
    if not rows:
        return pl.DataFrame(schema={"route": pl.String, "set": pl.String, "kind": pl.String, "step": pl.String, "count": pl.UInt32})
    keys = ["route", "set", "kind", "step"]
    return pl.DataFrame(rows).group_by(keys).len("count").sort(["route", "set", "count"], descending=[False, False, True])
