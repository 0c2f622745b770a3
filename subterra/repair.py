"""The repair map, and a repair round's training conversations: train only on what is still broken.

``repair_map`` clusters held-out failures by where they first went wrong: the kind of error
(wrong node, wrong slot, invalid form, ended early, ran on), the step the reference was at, the
edge the user's answer took into it, the off-script behaviour the user had just shown (unclear,
off-topic, correction: ``subterra.offscript``) and the slots that were wrong; with counts and a few examples, per route.

``repair_conversations`` writes extra training conversations through the failing clusters of one
route: scenarios on training paths that take the cluster's edge (or visit its step), with the
cluster's off-script behaviour placed at that step, slot values drawn from the training side of
each slot's split and phrasings from the pool training spoke (core or wide) — so nothing of a holdout (its reserved values,
its unseen phrasings, its texts) ever enters training; only *where* the model fails is used. Each
cluster gets ``per_failure`` conversations per failure (at most ``max_per_cluster``), and a replay
sample of the original training conversations is mixed in so the round does not forget the rest.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import polars as pl

from subterra.offscript import KINDS
from subterra.phrasing import SEEN
from subterra.routes import DEPLOYED
from subterra.scenario import Scenario, make_scenario, path_visit_keys, visit_key

if TYPE_CHECKING:
    from subterra.workflow import Workflow

CLUSTER_KEYS = ("kind", "node", "edge", "offscript", "slot")
# the eval sets a repair round is built on and promoted on: validation only, never a test set
# (people's validation lines are scripts with no path to write repair conversations through)
REPAIR_SETS = ("validation",)
MAP_SCHEMA = {
    "workflow": pl.String,
    "route": pl.String,
    "cluster": pl.String,
    "kind": pl.String,
    "node": pl.String,
    "edge": pl.String,
    "offscript": pl.String,
    "slot": pl.String,
    "failures": pl.Int64,
    "scenarios": pl.Int64,
    "share": pl.Float64,
    "holdouts": pl.String,
    "examples": pl.String,
}
EXAMPLES = 3


def failure_site(first_error: str | None) -> dict:
    """Where one failed scenario first went wrong, as the cluster keys."""
    error = json.loads(first_error) if first_error else {}
    user_kind = error.get("user_kind")
    offscript = user_kind if user_kind in KINDS else None
    kind = error.get("kind", "unknown")
    return {
        "kind": kind,
        "node": error.get("expected_node") or error.get("got_node"),
        "edge": None if offscript else error.get("edge"),
        "offscript": offscript,
        "slot": error.get("slot") if kind == "wrong_slot" else None,
    }


def cluster_name(site: dict) -> str:
    """A readable, unique name of a cluster: ``wrong_node at ask_dates via e3 after unclear [slot]``."""
    text = f"{site['kind']} at {site['node']}"
    if site.get("edge"):
        text += f" via {site['edge']}"
    if site.get("offscript"):
        text += f" after {site['offscript']}"
    if site.get("slot"):
        text += f" [{site['slot']}]"
    return text


def repair_map(scenarios: pl.DataFrame) -> pl.DataFrame:
    """One row per (route, cluster) of the ``eval_scenarios`` rows that failed strict pass,
    most failures first; ``share`` is the cluster's failures over the route's scenarios."""
    totals = dict(scenarios.group_by("route").len().iter_rows())
    groups: dict[tuple, dict] = {}
    for r in scenarios.filter(~pl.col("strict_pass")).sort(["route", "set", "scenario_id"]).iter_rows(named=True):
        site = failure_site(r["first_error"])
        key = (r["route"], *(site[k] for k in CLUSTER_KEYS))
        group = groups.setdefault(key, {"site": site, "failures": 0, "holdouts": {}, "examples": []})
        group["failures"] += 1
        group["holdouts"][r["set"]] = group["holdouts"].get(r["set"], 0) + 1
        if len(group["examples"]) < EXAMPLES:
            error = json.loads(r["first_error"]) if r["first_error"] else {}
            group["examples"].append(
                {
                    "scenario_id": r["scenario_id"],
                    "set": r["set"],
                    "turn": error.get("turn"),
                    "expected": {"node": error.get("expected_node"), "slots": error.get("expected_slots")},
                    "got": {"node": error.get("got_node"), "slots": error.get("got_slots")},
                }
            )
    rows = []
    workflow = scenarios["workflow"][0] if scenarios.height else ""
    for (route, *_), g in groups.items():
        rows.append(
            {
                "workflow": workflow,
                "route": route,
                "cluster": cluster_name(g["site"]),
                **g["site"],
                "failures": g["failures"],
                "scenarios": totals[route],
                "share": g["failures"] / totals[route],
                "holdouts": json.dumps(g["holdouts"], sort_keys=True),
                "examples": json.dumps(g["examples"]),
            }
        )
    frame = pl.DataFrame(rows, schema=MAP_SCHEMA)
    return frame.sort(["route", "failures", "cluster"], descending=[False, True, False])


def cluster_counts(scenarios: pl.DataFrame, route: str) -> dict[str, int]:
    """Failures per cluster name of one route."""
    frame = repair_map(scenarios.filter(pl.col("route") == route))
    return dict(zip(frame["cluster"].to_list(), frame["failures"].to_list()))


@dataclass(frozen=True)
class RepairConfig:
    """A repair round: what it writes (per cluster of validation failures), how it trains and when its
    weights are promoted."""

    rounds: int = 1  # repair rounds (0: only record the compile's model as promoted)
    route: str = DEPLOYED  # whose failures are repaired and whose validation score gates promotion
    tolerance: int = 0  # a cluster may grow by this many failures without refusing the promotion
    epochs: float = 1.0  # training of a round, from the current weights
    learning_rate: float | None = None  # None: the compile's
    max_tokens: int = 0  # compute budget of a round (0: no cap)
    max_steps: int = -1
    per_failure: int = 4  # training conversations per held-out failure of a cluster
    max_per_cluster: int = 24
    max_conversations: int = 400  # all clusters together
    replay_ratio: float = 1.0  # original training conversations mixed in, per repair conversation
    offscript_rate: float = 0.15
    random_value_rate: float = 0.5
    seed: int = 0


def cluster_paths(wf: Workflow, site: dict, paths: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """The training paths through a cluster: those taking its edge, else those visiting its step."""
    if site.get("edge"):
        return [tuple(p) for p in paths if site["edge"] in p]
    if site.get("node"):
        return [tuple(p) for p in paths if visit_key(site["node"], 1) in path_visit_keys(wf, p)]
    return [tuple(p) for p in paths]


def repair_plan(wf: Workflow, clusters: pl.DataFrame, paths: Sequence[Sequence[str]], round_no: int, config: RepairConfig = RepairConfig()):
    """(site, path, index) of every repair conversation: through each cluster of ``clusters``
    (rows of one route's repair map, most failures first), within the round's caps."""
    planned: list[tuple[dict, list[tuple[str, ...]], int]] = []
    for row in clusters.iter_rows(named=True):
        site = {k: row[k] for k in CLUSTER_KEYS}
        through = cluster_paths(wf, site, paths)
        if through:
            planned.append((site, through, min(config.max_per_cluster, config.per_failure * row["failures"])))
    out = []
    rng = random.Random(f"{wf.id}|repair|{round_no}|{config.seed}")
    for site, through, count in planned:
        for j in range(count):
            if len(out) >= config.max_conversations:
                return out
            path = through[j % len(through)] if j < len(through) else rng.choice(through)
            out.append((site, path, len(out)))
    return out


def repair_conversations(
    wf: Workflow, clusters: pl.DataFrame, paths, teacher, held_texts: set[str], round_no: int, config: RepairConfig = RepairConfig(),
    phrasing: str = SEEN,
) -> pl.DataFrame:
    """The round's repair conversations as corpus rows (split ``train``, ids ``repairN-00000``).
    ``phrasing``: the pool the compile's training users spoke (``training_phrasing``), so a
    round's users speak like the ones the model was trained on, never a held-back line."""
    from subterra.corpus import CORPUS_SCHEMA, corpus_row, draw_unlike

    rows = []
    for site, path, index in repair_plan(wf, clusters, paths, round_no, config):

        def draw(attempt: int, path=path, index=index, site=site):
            scenario = make_scenario(
                wf, path, "train", index, config.seed + 1_000_003 * round_no + 7919 * attempt,
                config.offscript_rate, config.random_value_rate,
            )
            offscript = dict(scenario.offscript)
            if site.get("offscript") and site.get("node"):
                offscript[visit_key(site["node"], 1)] = site["offscript"]
            return replace(scenario, id=f"repair{round_no}-{index:05d}", offscript=offscript, phrasing=phrasing)

        scenario, conv = draw_unlike(wf, teacher, held_texts, draw)
        rows.append(corpus_row(wf, scenario, conv, teacher.name))
    return pl.DataFrame(rows, schema=CORPUS_SCHEMA)


def training_phrasing(train: pl.DataFrame) -> str:
    """The phrasing pool the users of these training rows spoke (the compile's ``phrasings``
    setting: ``SEEN`` for core, ``WIDE`` for wide)."""
    spoken = {Scenario.from_json(text).phrasing for text in train["scenario"].unique()}
    if len(spoken) != 1:
        raise ValueError(f"the training conversations speak {sorted(spoken)}; expected one phrasing pool")
    return spoken.pop()


def repair_training_set(train: pl.DataFrame, repair: pl.DataFrame, config: RepairConfig = RepairConfig()) -> pl.DataFrame:
    """The repair conversations plus a seeded replay sample of the original training rows."""
    n = min(train.height, int(round(config.replay_ratio * repair.height)))
    replay = train.sample(n=n, seed=config.seed) if n else train.head(0)
    return pl.concat([repair, replay.select(repair.columns)], how="vertical_relaxed")


@dataclass
class RepairOutcome:
    """What the rounds decided: one ``promotions`` row per round (the compile's model first), and
    per round the clusters' changes and the candidate's scores."""

    decisions: list[dict]
    changes: list[pl.DataFrame]
    scores: list[pl.DataFrame]


def repair_rounds(
    wf: Workflow, corpus: pl.DataFrame, current: pl.DataFrame, paths, teacher, compile_config, model_dir: str,
    config: RepairConfig, eval_config, users, train_round: Callable, folders: Callable[[str], tuple[Path, str]],
    say: Callable[[str], None] = print, locate: Callable[[str], str] = str,
) -> RepairOutcome:
    """Repair rounds on ``config.route``: each writes training conversations through the failing
    clusters of ``current`` (the route's validation scenarios), continues training from the
    current weights (``train_round(train_config, config_file)``, returning a ``TrainResult``),
    plays the candidate on the same validation scenarios with the same ``users`` and promotes it
    only if strict pass improves and no cluster grows (``subterra.promotion.decide``).
    ``folders(tag)`` gives a round's run folder and the candidate's model folder; ``model_dir`` is
    the compile's model as recorded, ``locate`` where a recorded folder is now. No test set is read
    by any of it."""
    from subterra.atomic import atomic_path
    from subterra.evaluation import evaluate
    from subterra.promotion import decide, initial_row, promotion_row
    from subterra.routes import local_routes

    route = config.route
    current_dir = model_dir
    outcome = RepairOutcome([initial_row(wf.id, current_dir, route, current)], [], [])
    train = corpus.filter(pl.col("split") == "train").drop("n_tokens")
    held_texts = set(corpus.filter(pl.col("split").is_in(REPAIR_SETS))["messages"])  # a repair conversation is none of these
    spoken = training_phrasing(train)  # repair users speak the compile's phrasings (core or wide)
    for round_no in range(1, config.rounds + 1):
        clusters = repair_map(current).filter(pl.col("route") == route)
        if not clusters.height:
            say(f"round {round_no}: no held-out failure left on {route}; nothing to repair")
            break
        repair = repair_conversations(wf, clusters, paths, teacher, held_texts, round_no, config, phrasing=spoken)
        run_dir, candidate_dir = folders(f"{Path(model_dir).name}-repair{round_no}")  # the rounds of this compile's model
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / "train.parquet") as tmp:
            repair_training_set(train, repair, config).write_parquet(tmp)
        with atomic_path(run_dir / "lexicon.parquet") as tmp:
            pl.concat([train.select(repair.columns), repair], how="vertical_relaxed").write_parquet(tmp)
        round_config = replace(
            compile_config,
            init_from=locate(current_dir),  # continued training: the current weights and their tokenizer
            train_data=str(run_dir / "train.parquet"),
            lexicon_data=str(run_dir / "lexicon.parquet"),
            output_dir=candidate_dir,
            checkpoint_dir="",
            epochs=config.epochs,
            learning_rate=config.learning_rate or compile_config.learning_rate,
            max_tokens=config.max_tokens,
            max_steps=config.max_steps,
        )
        say(f"round {round_no}: {repair.height} repair conversations through {clusters.height} clusters "
            f"(+ replay), training from {current_dir}")
        result = train_round(round_config, run_dir / "train_config.json")
        evaluated = evaluate(
            local_routes([route], None, candidate_dir), wf, corpus, eval_config, users=users,
            progress=lambda name, done, total: say(f"round {round_no} eval {name}: {done}/{total}"),
        )
        decision = decide(current, evaluated.scenarios, route, config.tolerance)
        say(f"round {round_no}: {decision.reason}")
        if decision.promoted:
            current_dir, current = candidate_dir, evaluated.scenarios
        outcome.decisions.append(promotion_row(wf.id, round_no, candidate_dir, current_dir, route, decision))
        outcome.changes.append(decision.changes.with_columns(pl.lit(round_no).alias("round"), pl.lit(route).alias("route")))
        outcome.scores.append(evaluated.scores.with_columns(
            pl.lit(round_no).alias("round"),
            pl.lit(candidate_dir).alias("model_dir"),
            pl.lit(repair.height).alias("repair_conversations"),
            pl.lit(result.train_seconds).alias("train_seconds"),
            pl.lit(decision.promoted).alias("promoted"),
        ))
    return outcome
