"""Incremental recompiles: reuse everything a workflow change did not touch.

A conversation is made from its path's nodes and texts and from nothing else of the workflow but
its id, its one-line assistant text and its slot definitions (values are drawn for every slot).
``path_hashes`` hashes exactly that, together with the generation settings (teacher, seed,
off-script and random-value rates), so two compiles give a path the same hash if and only if the
teacher would write it the same conversations. ``Reuse`` holds a previous corpus keyed by
(path hash, conversation id): the corpus builder takes a conversation from it instead of asking
the teacher again, and counts what it reused and what it generated.

Training continues from the last good weights: ``training_mix`` gives every training
conversation a weight — how many times it is in the continued run's data. Conversations the
previous model never learnt are weighted up; a uniform sample of the others is replayed beside
them so the model does not forget the rest of the procedure. What the previous model learnt is
known by ``conversation_hashes`` (the exact text of each of its training conversations), not by
path: an edit of one of a node's four say lines changes the hash of every path through the node,
yet only the conversations that speak that line change (the teacher draws the same choices); the
others are the very tokens the model was trained on, and weighting them up would dilute the edit.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import polars as pl

from subterra.phrasing import lines_digest

if TYPE_CHECKING:
    from subterra.workflow import Workflow

# bump when the teacher, the scenarios or the corpus rows change in a way a path hash cannot see:
# 4: a say is a template ({slot} placeholders for held values); values reserved per type
# 5: training's random integers have 1 to 3 digits
# 6: a validation split (its own lines and values); integers in their range; short integer ranges closed
CORPUS_FORMAT = 6


def generation_context(wf: Workflow, teacher, config) -> dict:
    """What every conversation of this workflow depends on besides its own path."""
    definition = wf.to_dict()
    return {
        "format": CORPUS_FORMAT,
        "workflow": wf.id,
        "assistant": wf.assistant,
        "slots": definition["slots"],
        "teacher": [teacher.name, getattr(teacher, "seed", None)],
        "seed": config.seed,
        "offscript_rate": config.offscript_rate,
        "train_offscript_rate": config.train_offscript_rate,
        "train_correction_share": config.train_correction_share,
        "random_value_rate": config.random_value_rate,
        "request_share": getattr(config, "request_share", 0.0),
        **({"request_steps": config.request_steps} if getattr(config, "request_steps", 1) > 1 else {}),  # 1: as before it
        **({"noise_share": config.noise_share} if getattr(config, "noise_share", 0.0) else {}),  # 0: the hashes as before it
        # core: the hashes of format 4 (its lines never change); another setting: its lines, which may grow
        **({"phrasings": config.phrasings, "lines": lines_digest(config.phrasings)} if config.phrasings != "core" else {}),
    }


def path_hashes(wf: Workflow, paths: Sequence[Sequence[str]], context: dict) -> list[str]:
    """One 16-hex hash per path: its edges, the full definition (texts included) of every node
    it visits, and the shared ``context``. A text edit changes the hash of exactly the paths
    through the edited node (or edge: branch texts belong to their source node)."""
    from subterra.paths import path_nodes

    nodes = wf.to_dict()["nodes"]
    shared = json.dumps(context, sort_keys=True, ensure_ascii=False)
    out = []
    for path in paths:
        visited = dict.fromkeys(path_nodes(wf, path))
        body = json.dumps([list(path), {n: nodes[n] for n in visited}], sort_keys=True, ensure_ascii=False)
        out.append(hashlib.sha256(f"{shared}\n{body}".encode()).hexdigest()[:16])
    return out


def conversation_hashes(messages: Iterable[str]) -> list[str]:
    """One 16-hex hash per conversation (its ``messages`` JSON text, as the corpus stores it):
    two rows have the same hash if and only if training sees the same tokens."""
    return [hashlib.sha256(m.encode()).hexdigest()[:16] for m in messages]


@dataclass
class Reuse:
    """A previous corpus to take conversations from, and what was taken.

    ``previous`` is a corpus table (any compile of the same workflow); rows without a
    ``path_hash`` (a corpus from before incremental recompiles) are never reused.
    """

    previous: pl.DataFrame | None = None
    reused: int = 0
    generated: int = 0
    _rows: dict[tuple[str, str], dict] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.previous is not None and "path_hash" in self.previous.columns:
            for row in self.previous.filter(pl.col("path_hash").is_not_null()).iter_rows(named=True):
                self._rows[(row["path_hash"], row["conversation_id"])] = row

    def take(self, path_hash: str, conversation_id: str, refused: Iterable[str] = ()) -> dict | None:
        """The previous row for this path hash and conversation id, unless its text is ``refused``."""
        row = self._rows.get((path_hash, conversation_id))
        if row is None or row["messages"] in refused:
            return None
        return row


@dataclass(frozen=True)
class MixConfig:
    """How a continued training run (an incremental recompile) weights its data, and its learning rate."""

    changed_passes: float = 3.0  # times every new or changed conversation is seen
    replay_ratio: float = 2.0  # unchanged conversations replayed per changed conversation seen (kept when the mix is capped)
    min_fraction: float = 0.1  # the mix is at least this share of the full training set
    max_fraction: float = 0.35  # and at most this share (above it, a full retrain is as cheap)
    continue_learning_rate: float = 5e-4


@dataclass
class Mix:
    weights: list[int]  # per training row: how many times it is in the continued run's data
    changed: int  # rows the previous model was not trained on
    unchanged: int
    cap: int = 0  # the most rows a continued run is worth (``max_fraction`` of the rows)

    @property
    def size(self) -> int:
        return sum(self.weights)

    @property
    def worth_continuing(self) -> bool:
        """Is continuing on this mix cheaper than training anew? Not when the previous model
        learnt none of the rows (a new corpus format), nor when one pass over the changed rows is
        more than the cap (a change most conversations speak)."""
        return self.unchanged > 0 and self.changed <= self.cap


def training_mix(hashes_of_rows: Sequence[str], known: set[str], config: MixConfig = MixConfig(), seed: int = 0) -> Mix:
    """Weights for continued training: rows whose hash (``conversation_hashes``, or for a model
    trained before those were recorded ``path_hashes``) is not in ``known`` (what the previous
    model was trained on) ``changed_passes`` times each; a seeded uniform sample of the
    other rows replayed beside them, ``replay_ratio`` per changed row seen. The mix holds between
    ``min_fraction`` and ``max_fraction`` of the rows' count: replay fills it up to the minimum;
    above the maximum the changed rows and the replay shrink together, keeping their ratio, so the
    changed rows may be seen less than once each (a seeded share of them). A continued run that
    sees mostly changed rows moves the model away from what it had learnt, so the replay keeps its
    ratio (``bench.bench_continue`` measures mixes; ``docs/experiments.md``). A
    change one pass over which is more than the maximum is not worth continuing
    (``Mix.worth_continuing``): a full retrain is as cheap."""
    n = len(hashes_of_rows)
    changed = [i for i, h in enumerate(hashes_of_rows) if h not in known]
    unchanged = [i for i, h in enumerate(hashes_of_rows) if h in known]
    weights = [0] * n
    if not n:
        return Mix(weights, 0, 0)
    low, high = math.ceil(config.min_fraction * n), max(1, int(config.max_fraction * n))
    seen = len(changed) * config.changed_passes
    replay = seen * config.replay_ratio
    if seen + replay > high:  # more than a continued run is worth: both shrink to fit, in the same ratio
        seen = high / (1 + config.replay_ratio)
        replay = high - seen
    seen = max(1, round(seen)) if changed else 0
    replay = min(len(unchanged), max(round(replay), low - seen))
    rng = random.Random(seed)
    for k in range(seen):  # whole passes first, then a seeded share of the rows for the fraction left
        offset = k % len(changed)
        if offset == 0:
            order = changed[:]
            rng.shuffle(order)
        weights[order[offset]] += 1
    for i in rng.sample(unchanged, replay):
        weights[i] += 1
    return Mix(weights, len(changed), len(unchanged), high)


ARCHITECTURE = ("base_model", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads")


def continuable(previous: dict | None, config) -> str | None:
    """The previous compile's model folder if ``config`` (a ``TrainConfig``) can continue from it:
    the folder is still there, its row says which path hashes it learnt, and it was trained with
    the same student architecture. None otherwise (then training starts from scratch)."""
    from pathlib import Path

    from subterra.training import TrainConfig

    if not previous or previous.get("path_hashes") is None or not previous.get("model_dir"):
        return None
    folder = Path(previous["model_dir"])
    if not (folder / "model.safetensors").exists() or not (folder / "train_config.json").exists():
        return None
    before = TrainConfig.from_json(folder / "train_config.json")
    if any(getattr(before, name) != getattr(config, name) for name in ARCHITECTURE):
        return None
    return str(folder)


@dataclass
class TrainingPlan:
    """How a compile trains: from scratch (``start`` None) or continued from ``start`` on ``mix``."""

    start: str | None
    mix: Mix | None
    why: str  # one line for the run's log

    @property
    def keeps_weights(self) -> bool:
        """Nothing new to learn (an edit no conversation speaks): the previous weights stand."""
        return self.mix is not None and self.mix.changed == 0


def plan_training(previous: dict | None, train_config, learnt: Sequence[str], path_hashes: Sequence[str],
                  mix_config: MixConfig = MixConfig()) -> TrainingPlan:
    """Continue from ``previous`` (the last good model's ``trained_weights`` row, its folder where it
    is now; None for a full recompile) if ``train_config`` can (``continuable``) and the training rows
    (their conversation hashes ``learnt``, their ``path_hashes``) are mostly known to it; else train
    from scratch. Continuing sets ``train_config``'s starting weights, one pass over the mix and the
    continued learning rate."""
    start = continuable(previous, train_config)
    if start is None:
        return TrainingPlan(None, None, "training from scratch")
    if previous.get("conversation_hashes") is not None:  # what the last model learnt, conversation by conversation
        mix = training_mix(learnt, set(previous["conversation_hashes"]), mix_config, train_config.seed)
    else:  # a model trained before those were recorded: by path
        mix = training_mix(list(path_hashes), set(previous["path_hashes"]), mix_config, train_config.seed)
    if not mix.worth_continuing:  # a new corpus format, or a change most conversations speak
        return TrainingPlan(None, None, f"{mix.changed} of {mix.changed + mix.unchanged} conversations are new to the last "
                                        f"model (at most {mix_config.max_fraction:.0%} are worth continuing on): training from scratch")
    train_config.init_from = start
    train_config.epochs, train_config.max_steps, train_config.max_tokens = 1.0, -1, 0  # the mix is the budget
    train_config.learning_rate = mix_config.continue_learning_rate
    return TrainingPlan(start, mix, f"continuing from {start}: {mix.changed} conversations it was not trained on, "
                                    f"{mix.unchanged} unchanged; a mix of {mix.size}")
