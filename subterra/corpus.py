"""The synthetic corpus: every selected path rendered into conversations, plus two holdouts.

* ``train`` — ``conversations_per_path`` scenarios on every selected path (so every path and every
  edge is covered), slot values from the training side of each slot's split (plus random values
  shaped like the pool's, at ``random_value_rate``), phrasings from the seen pool.
* ``holdout`` — ``holdout_scenarios`` scenarios spread over the paths, with reserved slot values
  training never contains, phrasings from the same pool as training.
* ``holdout_unseen`` — the same scenarios spoken with the held-back phrasings training never saw.

A holdout conversation never appears in training: a training conversation whose text equals a
holdout one is dropped and redrawn.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import polars as pl

from subterra.paths import path_id
from subterra.phrasing import UNSEEN
from subterra.scenario import Scenario, make_scenario
from subterra.teacher import Conversation, Teacher

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
}


@dataclass(frozen=True)
class CorpusConfig:
    conversations_per_path: int = 4
    max_train_conversations: int = 6000  # caps conversations_per_path x paths (every path keeps one)
    holdout_scenarios: int = 200
    offscript_rate: float = 0.15  # of the holdouts' steps (and of training's, unless set below)
    train_offscript_rate: float | None = None  # training may see off-script turns more often than users make them
    random_value_rate: float = 0.5
    seed: int = 0
    max_conversations: int = 100_000  # refuse before generating anything larger


class CorpusTooLarge(ValueError):
    pass


def planned_sizes(n_paths: int, config: CorpusConfig) -> dict[str, int]:
    per_path = config.conversations_per_path
    if n_paths * per_path > config.max_train_conversations:
        per_path = max(1, config.max_train_conversations // max(1, n_paths))
    return {
        "per_path": per_path,
        "train": n_paths * per_path,
        "holdout": config.holdout_scenarios,
        "holdout_unseen": config.holdout_scenarios,
    }


def build_corpus(
    wf,
    paths: Sequence[Sequence[str]],
    teacher: Teacher,
    config: CorpusConfig = CorpusConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Render the corpus table (schema ``CORPUS_SCHEMA``, one row per conversation)."""
    paths = [tuple(p) for p in paths]
    if not paths:
        raise ValueError(f"{wf.id}: no paths to render")
    sizes = planned_sizes(len(paths), config)
    total = sizes["train"] + sizes["holdout"] + sizes["holdout_unseen"]
    if total > config.max_conversations:
        raise CorpusTooLarge(
            f"{wf.id}: corpus of {total:,} conversations ({len(paths):,} paths x {sizes['per_path']} + "
            f"2 x {config.holdout_scenarios} holdout) exceeds max_conversations={config.max_conversations:,}"
        )
    rows: list[dict] = []

    def row(scenario: Scenario, conv: Conversation) -> dict:
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
            "teacher": teacher.name,
            "teacher_tokens_in": conv.tokens_in,
            "teacher_tokens_out": conv.tokens_out,
            "teacher_usd": conv.usd,
            "teacher_error": conv.error,
        }

    def report() -> None:
        if progress is not None:
            progress(len(rows), total)

    # holdouts first: their texts are what training must never contain
    order = list(range(len(paths)))
    random.Random(config.seed).shuffle(order)
    held: list[Scenario] = []
    for i in range(config.holdout_scenarios):
        path = paths[order[i % len(paths)]]
        scenario = make_scenario(wf, path, "holdout", i, config.seed, config.offscript_rate)
        held += [scenario, replace(scenario, id=f"holdout_unseen-{i:05d}", split="holdout_unseen", phrasing=UNSEEN)]
    held_conversations = teacher.conversations(wf, held)
    rows += [row(s, c) for s, c in zip(held, held_conversations)]
    held_texts = {_text(c) for c in held_conversations if c.error is None}
    report()

    # training: a conversation whose text equals a holdout one is redrawn (the same index, another seed)
    train_offscript = config.offscript_rate if config.train_offscript_rate is None else config.train_offscript_rate
    todo = [(index, path) for index, path in enumerate(p for p in paths for _ in range(sizes["per_path"]))]
    chosen: dict[int, tuple[Scenario, Conversation]] = {}
    for attempt in range(20):
        scenarios = [
            make_scenario(wf, path, "train", index, config.seed + 7919 * attempt, train_offscript, config.random_value_rate)
            for index, path in todo
        ]
        redraw = []
        for (index, path), scenario, conv in zip(todo, scenarios, teacher.conversations(wf, scenarios)):
            if conv.error is None and _text(conv) in held_texts:
                redraw.append((index, path))
            else:
                chosen[index] = (scenario, conv)
        todo = redraw
        if not todo:
            break
    else:
        raise RuntimeError(f"{wf.id}: could not draw a training conversation unlike the holdouts")
    rows += [row(*chosen[index]) for index in sorted(chosen)]
    report()
    return pl.DataFrame(rows, schema=CORPUS_SCHEMA)


def _text(conv: Conversation) -> str:
    return json.dumps(conv.messages, ensure_ascii=False)


def messages_of(row_messages: str) -> list[dict[str, str]]:
    return json.loads(row_messages)
