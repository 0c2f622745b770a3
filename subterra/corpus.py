"""The synthetic corpus: every selected path rendered into conversations, plus two holdouts.

* ``train`` — ``conversations_per_path`` scenarios on every selected path (so every path and every
  edge is covered), slot values from the training side of each slot's split (plus random values
  shaped like the pool's, at ``random_value_rate``), phrasings from the seen pool.
* ``validation`` — ``validation_scenarios`` scenarios spread over the paths, with the validation
  slot values and phrasings (neither in training nor in a test set): every choice is made on it.
* ``holdout`` — ``holdout_scenarios`` scenarios spread over the paths, with reserved slot values
  training never contains, phrasings from the same pool as training (a test set: "seen phrasings").
* ``test_unseen`` — the same scenarios spoken with the held-back phrasings training never saw.

A held-out conversation never appears in training: a training conversation whose text equals a
held-out one is dropped and redrawn.

Every row carries its path's hash (``subterra.incremental.path_hashes``: the path's nodes and
texts plus the generation settings). A training scenario is seeded by its path and its number on
that path, never by its place in the whole corpus, so a path's conversations stay the same when
other paths come or go; given the previous corpus (``Reuse``), a conversation whose path hash and
id are unchanged is taken from it byte for byte instead of being written again.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import polars as pl

from subterra.incremental import Reuse, generation_context, path_hashes
from subterra.paths import path_id
from subterra.phrasing import PHRASINGS
from subterra.scenario import Scenario, make_scenario
from subterra.teacher import Conversation, Teacher

if TYPE_CHECKING:
    from subterra.workflow import Workflow

CORPUS_SCHEMA = {
    "workflow": pl.String,
    "conversation_id": pl.String,
    "split": pl.String,
    "path_id": pl.String,
    "scenario": pl.String,
    "messages": pl.String,
    "n_turns": pl.Int64,
    "nodes": pl.List(pl.String),
    "edges": pl.List(pl.String),
    "offscript": pl.List(pl.String),
    "teacher": pl.String,
    "teacher_tokens_in": pl.Int64,  # measured tokens and dollars of a teacher that calls a model (0 offline)
    "teacher_tokens_out": pl.Int64,
    "teacher_usd": pl.Float64,
    "teacher_error": pl.String,  # why the teacher's output is no conversation (the gate rejects the row)
    "path_hash": pl.String,  # subterra.incremental.path_hashes: what a recompile may reuse the row by
}


@dataclass(frozen=True)
class CorpusConfig:
    conversations_per_path: int = 8  # the target before coverage top-ups ("uniform": each path's share)
    max_train_conversations: int = 800  # the training budget (every edge keeps one conversation past it)
    # how conversations are shared among paths (subterra.sizing): "workflow" sizes them so every
    # edge and enum value gets a floor of examples, "uniform" gives each path the same share
    sizing: Literal["uniform", "workflow"] = "workflow"
    min_train_conversations: int = 600  # "workflow": a small workflow still gets this many
    edge_floor: int = 24  # "workflow": training conversations through every edge, at least
    value_floor: int = 12  # "workflow": conversations per declared value of an enum slot, at least
    holdout_scenarios: int | None = None  # per test set (holdout, test_unseen); None: sized from the paths (subterra.sizing.heldout_size)
    validation_scenarios: int | None = None  # None: as many as the holdout
    offscript_rate: float = 0.15  # of the holdouts' steps (and of training's, unless set below)
    train_offscript_rate: float | None = 0.3  # training may see off-script turns more often than users make them (None: offscript_rate)
    # of training's off-script turns, the share of corrections (None: a third, as the others): naming
    # which slot an old value was in is the hardest off-script skill
    train_correction_share: float | None = 0.5
    random_value_rate: float = 0.5
    # the user's generic lines (openers, unclear, off-topic, corrections): "core", the original pools,
    # or "wide", more variety (a pretrained student generalizes from it; the tiny one does worse with it)
    phrasings: Literal["core", "wide"] = "core"
    request_share: float = 0.0  # of training conversations, those whose first message is the request itself
    # a request answers the start step and, drawn alike from 1 to this many, the steps after it
    # ("I'm Ana Ruiz, my invoice is wrong": a name and a billing question in one message)
    request_steps: int = 1
    noise_share: float = 0.0  # of training answers, those typed as people type (subterra.noise)
    seed: int = 0
    max_conversations: int = 100_000  # refuse before generating anything larger


# the generated held-out sets open both ways people do: half with a bare greeting, half with the
# request in the first message (a measurement choice, the same whatever training does)
HELDOUT_REQUEST_SHARE = 0.5


class CorpusTooLarge(ValueError):
    pass


def planned_sizes(wf: Workflow, paths: Sequence[Sequence[str]], config: CorpusConfig) -> dict:
    from subterra.sizing import heldout_size, train_counts

    per_path = train_counts(wf, paths, config)
    held = heldout_size(len(paths)) if config.holdout_scenarios is None else config.holdout_scenarios
    return {
        "per_path": per_path,  # training conversations of each path
        "train": sum(per_path),
        "validation": held if config.validation_scenarios is None else config.validation_scenarios,
        "holdout": held,
        "test_unseen": held,
    }


def build_corpus(
    wf: Workflow,
    paths: Sequence[Sequence[str]],
    teacher: Teacher,
    config: CorpusConfig = CorpusConfig(),
    progress: Callable[[int, int], None] | None = None,
    reuse: Reuse | None = None,
) -> pl.DataFrame:
    """Render the corpus table (schema ``CORPUS_SCHEMA``, one row per conversation).

    With ``reuse``, a conversation whose path hash and id are in its previous corpus is taken
    from there (a training one only if its text is not among the new holdouts); ``reuse`` counts
    the conversations reused and generated."""
    paths = [tuple(p) for p in paths]
    if not paths:
        raise ValueError(f"{wf.id}: no paths to render")
    sizes = planned_sizes(wf, paths, config)
    total = sizes["train"] + sizes["validation"] + sizes["holdout"] + sizes["test_unseen"]
    if total > config.max_conversations:
        raise CorpusTooLarge(
            f"{wf.id}: corpus of {total:,} conversations ({sizes['train']:,} over {len(paths):,} paths + "
            f"{sizes['validation']} validation + 2 x {sizes['holdout']} held out) exceeds max_conversations={config.max_conversations:,}"
        )
    reuse = reuse if reuse is not None else Reuse()
    hashes = path_hashes(wf, paths, generation_context(wf, teacher, config))
    rows: list[dict] = []

    def row(scenario: Scenario, conv: Conversation, path_hash: str) -> dict:
        reuse.generated += 1
        return corpus_row(wf, scenario, conv, teacher.name, path_hash)

    def kept(previous: dict) -> dict:
        reuse.reused += 1
        return {k: previous[k] for k in CORPUS_SCHEMA}

    def report() -> None:
        if progress is not None:
            progress(len(rows), total)

    if config.phrasings not in PHRASINGS:
        raise ValueError(f"phrasings must be one of {', '.join(PHRASINGS)}, not {config.phrasings!r}")
    spoken, validation, unseen = PHRASINGS[config.phrasings]  # train and holdout; validation's and test_unseen's held-back lines
    # holdouts first: their texts are what training must never contain
    order = list(range(len(paths)))
    random.Random(config.seed).shuffle(order)
    held: list[tuple[Scenario, str]] = []  # (scenario, its path's hash)
    for i in range(sizes["holdout"]):
        p = order[i % len(paths)]
        scenario = replace(make_scenario(wf, paths[p], "holdout", i, config.seed, config.offscript_rate,
                                         request_share=HELDOUT_REQUEST_SHARE), phrasing=spoken)
        held += [(scenario, hashes[p]), (replace(scenario, id=f"test_unseen-{i:05d}", split="test_unseen", phrasing=unseen), hashes[p])]
    order = list(range(len(paths)))
    random.Random(config.seed + 1).shuffle(order)
    for i in range(sizes["validation"]):
        p = order[i % len(paths)]
        scenario = replace(make_scenario(wf, paths[p], "validation", i, config.seed, config.offscript_rate,
                                         request_share=HELDOUT_REQUEST_SHARE), phrasing=validation)
        held.append((scenario, hashes[p]))
    held_rows: dict[int, dict] = {}
    todo = []
    for k, (scenario, h) in enumerate(held):
        previous = reuse.take(h, scenario.id)
        if previous is not None and previous["teacher_error"] is None:
            held_rows[k] = kept(previous)
        else:
            todo.append(k)
    for k, conv in zip(todo, teacher.conversations(wf, [held[k][0] for k in todo])):
        held_rows[k] = row(held[k][0], conv, held[k][1])
    rows += [held_rows[k] for k in range(len(held))]
    held_texts = {r["messages"] for r in rows if r["teacher_error"] is None}
    report()

    # training: seeded by path and number on the path (never by place in the corpus), so a path's
    # conversations stay the same when other paths change; a conversation whose text equals a
    # holdout one is redrawn (same number, another seed)
    train_offscript = config.offscript_rate if config.train_offscript_rate is None else config.train_offscript_rate
    slots = [(p, k) for p in range(len(paths)) for k in range(sizes["per_path"][p])]
    train_rows: dict[tuple[int, int], dict] = {}
    todo = []
    for p, k in slots:
        previous = reuse.take(hashes[p], f"train-{path_id(paths[p])}-{k:03d}", refused=held_texts)
        if previous is not None and previous["teacher_error"] is None:
            train_rows[(p, k)] = kept(previous)
        else:
            todo.append((p, k))
    for attempt in range(20):
        if not todo:
            break
        scenarios = [
            replace(
                make_scenario(wf, paths[p], "train", k, config.seed + 7919 * attempt, train_offscript, config.random_value_rate,
                              config.train_correction_share, config.request_share, config.request_steps),
                id=f"train-{path_id(paths[p])}-{k:03d}",
                phrasing=spoken,
                noise=config.noise_share,
            )
            for p, k in todo
        ]
        redraw = []
        for (p, k), scenario, conv in zip(todo, scenarios, teacher.conversations(wf, scenarios)):
            if conv.error is None and _text(conv) in held_texts:
                redraw.append((p, k))
            else:
                train_rows[(p, k)] = row(scenario, conv, hashes[p])
        todo = redraw
    if todo:
        raise RuntimeError(f"{wf.id}: could not draw a training conversation unlike the holdouts")
    rows += [train_rows[slot] for slot in slots]
    report()
    return pl.DataFrame(rows, schema=CORPUS_SCHEMA)


def _text(conv: Conversation) -> str:
    return json.dumps(conv.messages, ensure_ascii=False)


def draw_unlike(wf: Workflow, teacher: Teacher, held_texts: set[str], draw: Callable[[int], Scenario]):
    """(scenario, conversation) for training: ``draw(attempt)`` redrawn until the teacher makes it
    a conversation whose text is none of ``held_texts`` (the holdouts')."""
    for attempt in range(20):
        scenario = draw(attempt)
        conv = teacher.conversations(wf, [scenario])[0]
        if conv.error is None and _text(conv) not in held_texts:
            return scenario, conv
    raise RuntimeError(f"{wf.id}: could not draw a training conversation unlike the holdouts")


def corpus_row(wf: Workflow, scenario: Scenario, conv: Conversation, teacher_name: str, path_hash: str | None = None) -> dict:
    """One row of the corpus table (``CORPUS_SCHEMA``): a scenario and its rendered conversation
    (``path_hash``: None for conversations no recompile reuses, such as a repair round's)."""
    return {
        "workflow": wf.id,
        "conversation_id": scenario.id,
        "split": scenario.split,
        "path_id": path_id(scenario.path),
        "scenario": scenario.to_json(),
        "messages": _text(conv),
        "n_turns": len(conv.nodes),
        "nodes": conv.nodes,
        "edges": conv.edges,
        "offscript": conv.offscript,
        "teacher": teacher_name,
        "teacher_tokens_in": conv.tokens_in,
        "teacher_tokens_out": conv.tokens_out,
        "teacher_usd": conv.usd,
        "teacher_error": conv.error,
        "path_hash": path_hash,
    }
