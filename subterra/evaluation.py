"""Evaluation: held-out scenarios replayed against every route, scored objectively.

Each held-out scenario is played by its user (the scripted one, or Claude in the scenario's
persona: ``Users``) against each route (``subterra.routes``): the same users, the same scenarios,
for every route. The user answers the step the model is actually at, so a derailment shows. The
teacher's conversation for the same scenario is the reference; every assistant turn is compared
with it. ``score`` scores any route's transcript the same way (the frontier route's too:
``subterra.frontier``). A model-played user is called inside the lockstep, one message at a time.

Three kinds of held-out user language are kept apart: ``validation`` (generated with its own
held-back lines and values) and ``validation_natural`` (people's lines, ``subterra.natural``) are
what every choice reads (settings, runtime rules, repair clusters, the promotion gate); the test
sets ``natural`` (people's lines), ``test_unseen`` (held-back workflow and generic lines) and
``holdout`` (training's phrasings with unseen values: "seen") are reported and read by nothing else.
Natural conversations are played as scripts (fixed user lines; ``score_script``).

Per scenario and route: strict pass (every step, every slot value, every form and every reply
right: ``subterra.say_judge``), partial
credit (share of reference steps the model took at the same turn), slot accuracy, form validity,
graceful handling (off-script turns answered at the right step, corrections captured), failure
(the conversation did not end at the reference's terminal step), where it first went wrong
(``first_error``: turn, node, the edge the user's answer took, off-script kind, slots), tokens
in/out and per-turn latency. Aggregates per route x holdout (with the judge's scores when a judge
scored the conversations: ``subterra.judge``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import polars as pl

from subterra.forms import Form, parse_form
from subterra.judge import judge_aggregates
from subterra.offscript import KINDS
from subterra.routes import DEPLOYED, Episode, PlayConfig, Route, Transcript
from subterra.say_judge import SayJudge
from subterra.scenario import Scenario
from subterra.simulator import SCRIPTED, Users

if TYPE_CHECKING:
    from subterra.workflow import Workflow

ROUTE = DEPLOYED  # the route a transcript is scored as unless told
CORPUS_SETS = ("validation", "holdout", "test_unseen")  # generated: splits of the corpus table
NATURAL_SETS = ("natural", "validation_natural")  # written by people: subterra.natural
VALIDATION_SETS = ("validation", "validation_natural")  # what choices read
TEST_SETS = ("natural", "test_unseen", "holdout")  # what is reported, in this order
SET_ORDER = TEST_SETS + VALIDATION_SETS
SET_LABELS = {
    "natural": "natural (people's lines, test)",
    "test_unseen": "test_unseen (held-back lines, test)",
    "holdout": "holdout (seen phrasings, test)",
    "validation": "validation (choices)",
    "validation_natural": "validation_natural (choices)",
}
__all__ = ["EvalConfig", "EvalResult", "Transcript", "aggregate", "evaluate", "score", "score_script", "select_sets", "wilson"]


@dataclass(frozen=True)
class EvalConfig(PlayConfig):
    scenarios: int = 200  # at most, per generated set (the corpus sizes each set: subterra.sizing.heldout_size)
    extra_turns: int = 4  # a derailed conversation may run this many turns past the reference
    # the generated sets played (natural ones: ``natural``); the gate reads validation, so a model
    # evaluated without it does not hold
    sets: tuple[str, ...] = CORPUS_SETS
    natural: bool = True  # also play the workflow's natural sets (data/natural/{test,validation}/WORKFLOW.yaml)
    # the deployed route only, so a recompile stays quick; ROUTES adds free generation and the
    # base-model routes (those need a pretrained base model), as the ladder profiles do
    routes: tuple[str, ...] = (DEPLOYED,)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EvalConfig":
        data = json.loads(text)
        if "holdouts" in data:  # an eval config stored before the validation split
            data["sets"] = [h.replace("holdout_unseen", "test_unseen") for h in data.pop("holdouts")]
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """The 95% Wilson score interval of a rate of ``k`` in ``n``."""
    if n <= 0:
        return None, None
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float | None, float | None]:
    """A normal-approximation 95% interval of a mean of shares (partial credit), kept in [0, 1]."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return max(0.0, mean - z * sd / math.sqrt(n)), min(1.0, mean + z * sd / math.sqrt(n))


@dataclass
class EvalResult:
    scenarios: pl.DataFrame
    scores: pl.DataFrame


def select_sets(rows: pl.DataFrame, config: EvalConfig) -> list[dict]:
    """The first ``config.scenarios`` conversations of each generated set (by id): every route plays these."""
    selected = []
    for holdout in config.sets:
        part = rows.filter(pl.col("split") == holdout).sort("conversation_id").head(config.scenarios)
        selected.extend(part.iter_rows(named=True))
    return selected


def say_verdicts(wf: Workflow, transcript: Transcript, judge: SayJudge | None, values=()) -> list[str | None]:
    """Per turn: None if the reply the user read fits the step the agent took, else why not."""
    judge = judge or SayJudge(wf)
    held: dict[str, str] = {}
    out = []
    for i, g in enumerate(transcript.turns):
        held.update(g.slots)
        out.append(judge.fits(g.node, g.say, held, transcript.user_texts[: i + 1], values) if g.node in wf.nodes else "no_step")
    return out


def score(wf: Workflow, scenario: Scenario, reference: list[dict], transcript: Transcript, route: str = ROUTE,
          judge: SayJudge | None = None) -> dict:
    """A generated scenario's transcript against its reference conversation."""
    expected = [parse_form(m["content"]) for m in reference if m["role"] == "assistant"]
    values = list(scenario.values.values()) + list(scenario.corrections.values())
    return _scored(wf, scenario.id, scenario.split, expected, transcript, route, say_verdicts(wf, transcript, judge, values),
                   same_slots=lambda got, want: got == want, natural=False)


def score_script(wf: Workflow, scenario: Scenario, script, transcript: Transcript, route: str = ROUTE,
                 judge: SayJudge | None = None) -> dict:
    """A natural conversation's transcript against its script: a turn is right when its step, its
    slots (``natural.normalise``d) and its reply fit; partial credit is the share of turns right
    before the first wrong one (the script stops there)."""
    from subterra.natural import normalise

    expected = [Form(t.node, dict(t.slots)) for t in script]
    values = [v for t in script for v in t.slots.values()]

    def same(got, want):
        return {k: normalise(v) for k, v in got.items()} == {k: normalise(v) for k, v in want.items()}

    return _scored(wf, scenario.id, scenario.split, expected, transcript, route, say_verdicts(wf, transcript, judge, values),
                   same_slots=same, natural=True)


def _scored(wf: Workflow, scenario_id: str, split: str, expected: list[Form], transcript: Transcript, route: str,
            says: list[str | None], same_slots, natural: bool) -> dict:
    got = transcript.turns
    n = len(expected)

    def right(i: int) -> bool:
        g, e = got[i], expected[i]
        return g.valid and g.node == e.node and same_slots(g.slots, e.slots) and says[i] is None

    steps_right = sum(1 for i in range(min(n, len(got))) if got[i].node == expected[i].node)
    slot_total = sum(len(f.slots) for f in expected)
    slot_right = sum(
        1
        for i, f in enumerate(expected)
        for s, v in f.slots.items()
        if i < len(got) and s in got[i].slots and same_slots({s: got[i].slots[s]}, {s: v})
    )
    strict = len(got) == n and (transcript.ended or natural) and all(right(i) for i in range(n))
    off_total = off_right = 0
    for i, kind in enumerate(transcript.user_kinds):
        if kind in KINDS and i < len(got) and i > 0:
            off_total += 1
            stayed = got[i].node == got[i - 1].node
            captured = not KINDS[kind].corrects or got[i].slots == transcript.user_slots[i]
            off_right += int(stayed and captured)
    first_error = None
    for i in range(max(n, len(got))):
        e = expected[i] if i < n else None
        g = got[i] if i < len(got) else None
        if e is None or g is None or not right(i):
            wrong = sorted(k for k in set(e.slots) | set(g.slots) if not same_slots({k: g.slots.get(k, "")}, {k: e.slots.get(k, "")})) \
                if e and g else []
            first_error = {
                "turn": i,
                "expected_node": e.node if e else None,
                "got_node": g.node if g else None,
                "expected_slots": e.slots if e else None,
                "got_slots": g.slots if g else None,
                "user_kind": transcript.user_kinds[i] if i < len(transcript.user_kinds) else None,
                "edge": transcript.user_edges[i] if i < len(transcript.user_edges) else None,
                "slot": ",".join(wrong) or None,
                "kind": _error_kind(e, g) if e is None or g is None or not (g.valid and g.node == e.node and same_slots(g.slots, e.slots))
                        else "wrong_say",
                "say": g.say if g else None,
                "say_verdict": says[i] if g is not None and i < len(says) else None,
            }
            break
    final_expected = expected[-1].node
    if natural:
        right_before = first_error["turn"] if first_error else n
        partial = min(right_before, n) / n
        failed = not (len(got) == n and all(got[i].node == expected[i].node for i in range(n)))
    else:
        partial = steps_right / n
        failed = not (transcript.ended and got and got[-1].node == final_expected)
    return {
        "workflow": wf.id,
        "route": route,
        "set": split,
        "scenario_id": scenario_id,
        "path_id": None,
        "truncated": transcript.truncated,
        "strict_pass": bool(strict),
        "partial_credit": partial,
        "slot_right": slot_right,
        "slot_total": slot_total,
        "forms_valid": sum(1 for g in got if g.valid),
        "says_right": sum(1 for v in says if v is None),
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
        slot_total, slot_right = int(part["slot_total"].sum()), int(part["slot_right"].sum())
        off_total, off_right = int(part["offscript_total"].sum()), int(part["offscript_right"].sum())
        turns, valid = int(part["turns"].sum()), int(part["forms_valid"].sum())
        passed, failed = int(part["strict_pass"].sum()), int(part["failed"].sum())
        says = int(part["says_right"].sum()) if "says_right" in part.columns and part["says_right"].null_count() == 0 else None
        out.append(
            {
                "workflow": workflow,
                "route": route,
                "set": holdout,
                "scenarios": part.height,
                "strict_pass": passed / part.height,
                **_interval("strict_pass", wilson(passed, part.height)),
                "partial_credit": float(part["partial_credit"].mean()),
                **_interval("partial_credit", mean_interval(part["partial_credit"].to_list())),
                "slot_accuracy": slot_right / slot_total if slot_total else None,
                **_interval("slot_accuracy", wilson(slot_right, slot_total)),
                "form_validity": valid / max(1, turns),
                "say_fit": says / turns if says is not None and turns else None,
                "graceful_handling": off_right / off_total if off_total else None,
                **_interval("graceful_handling", wilson(off_right, off_total)),
                "failure_rate": failed / part.height,
                **_interval("failure_rate", wilson(failed, part.height)),
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


def _interval(name: str, bounds: tuple[float | None, float | None]) -> dict:
    return {f"{name}_low": bounds[0], f"{name}_high": bounds[1]}


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return float(values[min(len(values) - 1, int(q * len(values)))])


def episodes(rows: pl.DataFrame, config: EvalConfig, natural: dict | None = None) -> tuple[list[Episode], list[str]]:
    """The held-out scenarios to play (``select_sets``: the first ``config.scenarios`` of each
    generated set), then every natural conversation in both openings; and their path ids."""
    out, path_ids = [], []
    for row in select_sets(rows, config):
        reference = json.loads(row["messages"])
        n_ref = sum(1 for m in reference if m["role"] == "assistant")
        out.append(Episode(Scenario.from_json(row["scenario"]), reference, n_ref + config.extra_turns))
        path_ids.append(row["path_id"])
    if config.natural:
        for name in NATURAL_SETS:
            for episode in natural_episodes((natural or {}).get(name), name):
                out.append(episode)
                path_ids.append(None)
    return out, path_ids


def natural_episodes(natural, set_name: str) -> list[Episode]:
    """Every conversation of a natural set as two scripts: a bare greeting first, and the request first."""
    from subterra.natural import OPENINGS

    if natural is None:
        return []
    out = []
    for conv in natural.conversations:
        for opening in OPENINGS:
            script = conv.script(natural.start, opening)
            reference = [{"role": "system", "content": ""}]
            for turn in script:
                reference.append({"role": "user", "content": turn.user})
                reference.append({"role": "assistant", "content": Form(turn.node, dict(turn.slots)).to_json()})
            scenario = Scenario(id=f"{conv.id}-{opening}", split=set_name, path=(), values={}, phrasing="natural")
            out.append(Episode(scenario, reference, len(script), script=script, today=natural.today))
    return out


def evaluate(
    routes: Sequence[Route],
    wf: Workflow,
    rows: pl.DataFrame,
    config: EvalConfig = EvalConfig(),
    progress: Callable[[str, int, int], None] | None = None,
    users: Users = SCRIPTED,
    natural: dict | None = None,
) -> EvalResult:
    """Evaluate every route on the same held-out scenarios of the corpus table ``rows`` (its
    generated sets, ``config.sets``), with ``users`` playing the user (the scripted user unless
    told), and on the ``natural`` sets (``subterra.natural.load_natural_sets``) as scripts."""
    chosen, path_ids = episodes(rows, config, natural)
    judge = SayJudge.from_corpus(wf, rows)
    results = []
    for route in routes:
        report = (lambda done, total, name=route.name: progress(name, done, total)) if progress else None
        transcripts = route.play(wf, chosen, config, report, users=users)
        for episode, pid, transcript in zip(chosen, path_ids, transcripts):
            if episode.script is not None:
                scored = score_script(wf, episode.scenario, episode.script, transcript, route=route.name, judge=judge)
                scored["user_simulator"] = "script"
            else:
                scored = score(wf, episode.scenario, episode.reference, transcript, route=route.name, judge=judge)
                scored["user_simulator"] = users.name
            scored["path_id"] = pid
            results.append(scored)
    frame = pl.DataFrame(results, infer_schema_length=None).sort(["route", "set", "scenario_id"])
    return EvalResult(scenarios=frame, scores=aggregate(frame))


def ordered(scores: pl.DataFrame) -> pl.DataFrame:
    """Score rows in report order: the test sets (natural, test_unseen, holdout) before validation."""
    rank = {name: i for i, name in enumerate(SET_ORDER)}
    return scores.with_columns(pl.col("set").replace_strict(rank, default=len(rank)).alias("_rank")).sort(
        ["_rank", "route"]).drop("_rank")


def headline(scores: pl.DataFrame) -> str:
    """One line per route and set, test sets first: strict pass with its n and 95% interval,
    failure rate and partial credit (Markdown table)."""
    lines = ["| route | set | n | strict pass (95% CI) | failure rate (95% CI) | partial credit |",
             "|---|---|---|---|---|---|"]
    for r in ordered(scores).iter_rows(named=True):
        lines.append(
            f"| {r['route']} | {SET_LABELS.get(r['set'], r['set'])} | {r['scenarios']} | "
            f"{r['strict_pass']:.3f} ({_fmt(r.get('strict_pass_low'))}-{_fmt(r.get('strict_pass_high'))}) | "
            f"{r['failure_rate']:.3f} ({_fmt(r.get('failure_rate_low'))}-{_fmt(r.get('failure_rate_high'))}) | "
            f"{r['partial_credit']:.3f} |"
        )
    return "\n".join(lines)


def _fmt(value) -> str:
    return "?" if value is None else f"{value:.3f}"


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
