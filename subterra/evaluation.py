"""Evaluation: held-out scenarios replayed against a compiled model, scored objectively.

Each held-out scenario is played by its user (the scripted one, or Claude in the scenario's persona:
``Users``) against the compiled model in the deployed runtime (one-line system prompt, no
procedure in context, prefilled form). The user answers the step the model is actually at, so a
derailment shows. The teacher's conversation for the same scenario is the reference; every
assistant turn is compared with it. ``score`` scores any route's transcript the same way (the
frontier route's too: ``subterra.frontier``). A model-played user is called inside the lockstep,
one message at a time.

Per scenario: strict pass (every step, every slot value and every form right), partial credit
(share of reference steps the model took at the same turn), slot accuracy, form validity,
graceful handling (off-script turns answered at the right step, corrections captured), failure
(the conversation did not end at the reference's terminal step), tokens in/out and per-turn
latency. Aggregates per holdout.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import polars as pl

from subterra.forms import parse_form
from subterra.judge import judge_aggregates
from subterra.runtime import Codec, Lockstep, TurnCounter, TurnRecord, fill_form
from subterra.scenario import Scenario
from subterra.simulator import SCRIPTED, Users

ROUTE = "compiled_prefill"
HOLDOUTS = ("holdout", "holdout_unseen")


@dataclass(frozen=True)
class EvalConfig:
    scenarios: int = 200  # per holdout
    batch_size: int = 64
    max_say_tokens: int = 64
    extra_turns: int = 4  # a derailed conversation may run this many turns past the reference
    holdouts: tuple[str, ...] = HOLDOUTS
    use_lexicon: bool = True  # the compile's lexicon of procedure words narrows the copy constraint
    copy_runs: bool = True  # with the lexicon: a value is a whole run of non-procedure words


@dataclass
class EvalResult:
    scenarios: pl.DataFrame
    scores: pl.DataFrame


@dataclass
class Transcript:
    """What happened in one evaluated conversation."""

    scenario_id: str
    turns: list[TurnRecord] = field(default_factory=list)
    user_kinds: list[str] = field(default_factory=list)  # kind of the user message before each turn
    user_slots: list[dict] = field(default_factory=list)
    user_texts: list[str] = field(default_factory=list)
    ended: bool = False
    user_fallbacks: int = 0  # turns a model-played user had to leave to the scripted wording

    def heard(self, turn) -> None:
        """The user's message before the next turn."""
        self.user_kinds.append(turn.kind)
        self.user_slots.append(dict(turn.slots))
        self.user_texts.append(turn.text)


def select_holdout(rows: pl.DataFrame, config: "EvalConfig") -> list[dict]:
    """The first ``config.scenarios`` conversations of each holdout (by id): every route plays these."""
    selected = []
    for holdout in config.holdouts:
        part = rows.filter(pl.col("split") == holdout).sort("conversation_id").head(config.scenarios)
        selected.extend(part.iter_rows(named=True))
    return selected


def conversation_program(codec: Codec, wf, scenario: Scenario, max_turns: int, max_say: int, out: Transcript, clock,
                         users: Users = SCRIPTED):
    """One scenario, start to end, as a lockstep program."""
    from subterra.runtime import force

    user = users.make(wf, scenario)
    turn = user.opener()
    context = codec.system(wf.assistant)
    yield from force(context)
    n_context = len(context)
    while len(out.turns) < max_turns:
        message = codec.user(turn.text)
        yield from force(message)
        n_context += len(message)
        out.heard(turn)
        counter = TurnCounter()
        started = clock()
        form, raw, valid = yield from fill_form(codec, turn.text, max_say, counter)
        record = TurnRecord(
            node=form.node, slots=form.slots, say=form.say, raw=raw, valid=valid and _parses(raw, wf),
            tokens_in=n_context + counter.forced, tokens_out=counter.chosen,
            latency_s=clock() - started,
        )
        n_context += counter.forced + counter.chosen
        out.turns.append(record)
        turn = user.reply(form.node, form.say)
        out.user_fallbacks = getattr(user, "fallbacks", 0)
        if turn is None:
            out.ended = True
            return


def _parses(raw: str, wf) -> bool:
    try:
        return parse_form(raw).node in wf.nodes
    except ValueError:
        return False


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
            first_error = {
                "turn": i,
                "expected_node": e.node if e else None,
                "got_node": g.node if g else None,
                "expected_slots": e.slots if e else None,
                "got_slots": g.slots if g else None,
                "user_kind": transcript.user_kinds[i] if i < len(transcript.user_kinds) else None,
                "kind": _error_kind(e, g),
            }
            break
    final_expected = expected[-1].node
    failed = not (transcript.ended and got and got[-1].node == final_expected)
    return {
        "workflow": wf.id,
        "route": route,
        "holdout": scenario.split,
        "scenario_id": scenario.id,
        "path_id": None,
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
    for (workflow, route, holdout), part in rows.group_by(["workflow", "route", "holdout"], maintain_order=True):
        latencies = [x for lst in part["latencies_ms"] for x in lst]
        slot_total = int(part["slot_total"].sum())
        off_total = int(part["offscript_total"].sum())
        out.append(
            {
                "workflow": workflow,
                "route": route,
                "holdout": holdout,
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


def evaluate(
    model_dir: str,
    wf,
    rows: pl.DataFrame,
    config: EvalConfig = EvalConfig(),
    progress: Callable[[int, int], None] | None = None,
    users: Users = SCRIPTED,
) -> EvalResult:
    """Evaluate the model in ``model_dir`` on the holdout rows of the corpus table ``rows``, with
    ``users`` playing the user (the scripted user unless told)."""
    import torch

    from subterra.lexicon import load_lexicon
    from subterra.student import load_compiled

    tokenizer, model = load_compiled(model_dir)
    codec = Codec(tokenizer, wf, load_lexicon(model_dir) if config.use_lexicon else frozenset(), config.copy_runs)
    driver = Lockstep(model, tokenizer.pad_token_id, codec.banned_in_say)
    selected = select_holdout(rows, config)
    # similar lengths share a batch: lockstep runs as long as its longest conversation
    selected.sort(key=lambda r: len(r["messages"]))
    results = []
    done = 0
    for start in range(0, len(selected), config.batch_size):
        batch = selected[start : start + config.batch_size]
        transcripts, programs, scenarios, lengths = [], [], [], []
        clock_now = [0.0]

        def clock() -> float:  # the batch's own forward time: latency a user of this batch waits
            return clock_now[0]

        def on_step(dt: float) -> None:
            clock_now[0] += dt

        for row in batch:
            scenario = Scenario.from_json(row["scenario"])
            reference = json.loads(row["messages"])
            n_ref = sum(1 for m in reference if m["role"] == "assistant")
            transcript = Transcript(scenario.id)
            programs.append(
                conversation_program(codec, wf, scenario, n_ref + config.extra_turns, config.max_say_tokens, transcript, clock, users)
            )
            transcripts.append(transcript)
            scenarios.append((scenario, reference, row["path_id"]))
            lengths.append(len(codec.encode(tokenizer.apply_chat_template(reference, tokenize=False))))
        max_len = int(1.3 * max(lengths)) + 256
        truncated = driver.run(programs, max_len, on_step=on_step)
        for (scenario, reference, pid), transcript, cut in zip(scenarios, transcripts, truncated):
            scored = score(wf, scenario, reference, transcript)
            scored["path_id"] = pid
            scored["truncated"] = cut
            scored["user_simulator"] = users.name
            results.append(scored)
        done += len(batch)
        if progress is not None:
            progress(done, len(selected))
    frame = pl.DataFrame(results).sort(["holdout", "scenario_id"])
    return EvalResult(scenarios=frame, scores=aggregate(frame))


def failure_summary(scenarios: pl.DataFrame) -> pl.DataFrame:
    """Where the failed scenarios first went wrong: holdout x kind x step, with counts."""
    rows = []
    for holdout, first_error in scenarios.filter(~pl.col("strict_pass")).select("holdout", "first_error").iter_rows():
        error = json.loads(first_error) if first_error else {"kind": "unknown", "expected_node": None}
        rows.append({"holdout": holdout, "kind": error["kind"], "step": error.get("expected_node") or error.get("got_node")})
    if not rows:
        return pl.DataFrame(schema={"holdout": pl.String, "kind": pl.String, "step": pl.String, "count": pl.UInt32})
    return pl.DataFrame(rows).group_by(["holdout", "kind", "step"]).len("count").sort(["holdout", "count"], descending=[False, True])
