"""The synthetic corpus: every selected path rendered into conversations, plus two holdouts.

* ``train`` — ``conversations_per_path`` scenarios on every selected path (so every path and every
  edge is covered), slot values from the training side of each slot's split (plus random values
  shaped like the pool's, at ``random_value_rate``), phrasings from the seen pool.
* ``holdout`` — ``holdout_scenarios`` scenarios spread over the paths, with reserved slot values
  training never contains, phrasings from the same pool as training.
* ``holdout_unseen`` — the same scenarios spoken with the held-back phrasings training never saw.

A holdout conversation never appears in training: a training conversation whose text equals a
holdout one is dropped and redrawn.

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
from typing import Callable, Sequence

import polars as pl

from subterra.incremental import Reuse, generation_context, path_hashes
from subterra.paths import path_id
from subterra.phrasing import UNSEEN
from subterra.scenario import Scenario, make_scenario
from subterra.teacher import Teacher

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
    "path_hash": pl.String,
}


@dataclass(frozen=True)
class CorpusConfig:
    conversations_per_path: int = 4
    max_train_conversations: int = 6000  # caps conversations_per_path x paths (every path keeps one)
    holdout_scenarios: int = 200
    offscript_rate: float = 0.15
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
    reuse: Reuse | None = None,
) -> pl.DataFrame:
    """Render the corpus table (schema ``CORPUS_SCHEMA``, one row per conversation).

    With ``reuse``, a conversation whose path hash and id are in its previous corpus is taken
    from there (a training one only if its text is not among the new holdouts); ``reuse`` counts
    the conversations reused and generated."""
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
    reuse = reuse if reuse is not None else Reuse()
    hashes = path_hashes(wf, paths, generation_context(wf, teacher, config))
    rows: list[dict] = []

    def emit(scenario: Scenario, path_hash: str, conv=None) -> str:
        conv = conv or teacher.conversation(wf, scenario)
        text = json.dumps(conv.messages, ensure_ascii=False)
        rows.append(
            {
                "workflow": wf.id,
                "conversation_id": scenario.id,
                "split": scenario.split,
                "path_id": path_id(scenario.path),
                "scenario": scenario.to_json(),
                "messages": text,
                "n_turns": len(conv.nodes),
                "nodes": conv.nodes,
                "edges": conv.edges,
                "offscript": conv.offscript,
                "teacher": teacher.name,
                "path_hash": path_hash,
            }
        )
        reuse.generated += 1
        return text

    def reused(row: dict) -> str:
        rows.append({k: row[k] for k in CORPUS_SCHEMA})
        reuse.reused += 1
        return row["messages"]

    def tick() -> None:
        if progress is not None and (len(rows) % 100 == 0 or len(rows) == total):
            progress(len(rows), total)

    # holdouts first: their texts are what training must never contain
    order = list(range(len(paths)))
    random.Random(config.seed).shuffle(order)
    held_texts: set[str] = set()
    for i in range(config.holdout_scenarios):
        p = order[i % len(paths)]
        scenario = make_scenario(wf, paths[p], "holdout", i, config.seed, config.offscript_rate)
        unseen = replace(scenario, id=f"holdout_unseen-{i:05d}", split="holdout_unseen", phrasing=UNSEEN)
        for s in (scenario, unseen):
            row = reuse.take(hashes[p], s.id)
            held_texts.add(reused(row) if row else emit(s, hashes[p]))
            tick()

    for p, path in enumerate(paths):
        for k in range(sizes["per_path"]):
            conversation_id = f"train-{path_id(path)}-{k:03d}"
            row = reuse.take(hashes[p], conversation_id, refused=held_texts)
            if row is not None:
                reused(row)
                tick()
                continue
            for attempt in range(20):
                scenario = make_scenario(
                    wf, path, "train", k, config.seed + 7919 * attempt,
                    config.offscript_rate, config.random_value_rate,
                )
                conv = teacher.conversation(wf, scenario)
                if json.dumps(conv.messages, ensure_ascii=False) not in held_texts:
                    break
            else:
                raise RuntimeError(f"{wf.id}: could not draw a training conversation unlike the holdouts")
            emit(replace(scenario, id=conversation_id), hashes[p], conv)
            tick()
    return pl.DataFrame(rows, schema=CORPUS_SCHEMA)


def messages_of(row_messages: str) -> list[dict[str, str]]:
    return json.loads(row_messages)
