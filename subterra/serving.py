"""Which weights serve a workflow, and why: the last good model.

A compile's model is *good* once its evaluation holds: the deployed route's strict pass on
``validation`` is at least a floor and not far below the last good model's (``holds``; the
``deployed_route_holds`` check of ``eval_scores``). Its ``trained_weights`` row is then kept, with
the strict pass it held at, as the workflow's row of ``good_models``.

A compile that comes out broken (a from-scratch tiny student can land where one transition is
wrong in nearly every conversation) is stored and evaluated like any other, but it does not take
the last good model down: that one goes on serving (``serving_model``, what ``subterra chat``
talks to), and the next incremental recompile continues from it, not from the broken weights
(``last_good_model``). A repair round that promoted new weights after the compile
(``subterra.promotion``) serves those: its gate compared them with the compile's own model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

GOOD_MODELS = "good_models"


@dataclass(frozen=True)
class Gate:
    """When a model holds (``holds``; the ``deployed_route_holds`` check, a warning: the run goes on
    and the UI shows it). A model that does not hold is not served and not continued from while an
    earlier one that held is there."""

    min_strict_pass: float = 0.5  # the deployed route's strict pass on validation (never a test set), at least
    max_drop: float = 0.1  # and at most this far below the last good model's
    # an incremental recompile promises a full recompile's quality: it holds only this close to the
    # model it continues; one that falls further is not served, and a full recompile follows
    incremental_max_drop: float = 0.02


def holds(strict: float | None, last_good: float | None, min_strict_pass: float, max_drop: float,
          continued: bool = False) -> tuple[bool, str]:
    """Does a model hold: its deployed route's validation strict pass at least ``min_strict_pass``,
    and at most ``max_drop`` below the last good model's? (held, why). ``continued``: the model is
    an incremental recompile of the last good one (``max_drop`` is then the incremental gate)."""
    if strict is None:
        return False, "the deployed route has no validation score"
    faults = []
    if strict < min_strict_pass:
        faults.append(f"strict pass {strict:.3f} on validation is below the floor {min_strict_pass:.3f}")
    if last_good is not None and strict < last_good - max_drop:
        below = (f"the {last_good:.3f} of the model this incremental recompile continues" if continued
                 else f"the last good model's {last_good:.3f}")
        faults.append(f"strict pass {strict:.3f} is {last_good - strict:.3f} below {below} (at most {max_drop:.3f} allowed)")
    return (not faults), ("; ".join(faults) or f"strict pass {strict:.3f} on validation holds")


def full_recompile_due(store, workflow: str) -> str | None:
    """Why the workflow's last compile should be done again in full, or None: it was an
    incremental recompile (training continued from the last good model) and its evaluation did not
    hold. A full recompile of the same definition is the answer: an incremental one promises the
    quality of a full one and did not keep it (or came out broken). A full compile that does not
    hold is not retried (its verdict stands, the last good model serves), nor is one whose repair
    round promoted weights of its own (they passed their own gate against the compile's model)."""
    try:
        trained = store.read("trained_weights", workflow).row(0, named=True)
    except (LookupError, FileNotFoundError):
        return None
    if trained.get("recompile") != "incremental" or not trained.get("continued_from"):
        return None
    run = evaluation_of(store, workflow, trained["model_dir"])
    if run is None or run["holds"]:
        return None
    promoted = _promoted_since(store, workflow, trained)
    if promoted is not None and promoted["model_dir"] != trained["model_dir"]:
        return None  # a repair round (the ladder) made the weights that serve it
    return f"the incremental recompile of {workflow} ({trained['model_dir']}) did not hold: {run['verdict']}"


def good_model_frame(trained: pl.DataFrame, strict: float, verdict: str) -> pl.DataFrame:
    """The ``good_models`` row of a model that held: its ``trained_weights`` row (what it learnt,
    the definition it was compiled from), the strict pass it held at, and when."""
    held_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return trained.with_columns(pl.lit(strict, dtype=pl.Float64).alias("strict_pass"),
                                pl.lit(verdict).alias("verdict"), pl.lit(held_at).alias("held_at"))


def last_good_model(store, workflow: str) -> dict | None:
    """The ``good_models`` row of the workflow's last model that held, if its folder is still there."""
    try:
        row = store.read(GOOD_MODELS, workflow).row(0, named=True)
    except (LookupError, FileNotFoundError):
        return None
    return row if (Path(store.located(row["model_dir"])) / "model.safetensors").exists() else None


def evaluation_of(store, workflow: str, model_dir: str) -> dict | None:
    """The workflow's last ``eval_runs`` row if it evaluated ``model_dir`` (with whether it held)."""
    try:
        run = store.read("eval_runs", workflow).row(0, named=True)
    except (LookupError, FileNotFoundError):
        return None
    return run if run.get("compiled_dir") == model_dir and run.get("holds") is not None else None


@dataclass(frozen=True)
class Serving:
    model_dir: str
    why: str
    definition: dict  # the workflow the model was compiled from (a newer, failed compile's is not it)


def serving_model(store, workflow: str) -> Serving:
    """The model that serves ``workflow``, why, and the definition it was compiled from:
    a repair round's promoted weights if one was promoted since the last compile; else the
    compile's own model if it held (or there is no good model to fall back on); else the last
    good model. ``LookupError`` if the workflow was never compiled. Its folder is where it is now
    (``Store.located``: the data folder may have moved since it was recorded)."""
    chosen = _serving_model(store, workflow)
    return Serving(store.located(chosen.model_dir), chosen.why, chosen.definition)


def _serving_model(store, workflow: str) -> Serving:
    trained = store.read("trained_weights", workflow).row(0, named=True)
    definition = json.loads(trained.get("definition") or store.read("workflow_definitions", workflow)["definition"][0])
    promoted = _promoted_since(store, workflow, trained)
    if promoted is not None and promoted["model_dir"] != trained["model_dir"]:
        return Serving(promoted["model_dir"], promoted["reason"], definition)
    run = evaluation_of(store, workflow, trained["model_dir"])
    if run is not None and run["holds"]:
        return Serving(trained["model_dir"], promoted["reason"] if promoted else f"the compile's model: {run['verdict']}", definition)
    good = last_good_model(store, workflow)
    if good is None or good["model_dir"] == trained["model_dir"]:
        state = f"it did not hold ({run['verdict']})" if run is not None else "not evaluated yet"
        why = promoted["reason"] if promoted else "the compile's model"
        return Serving(trained["model_dir"], f"{why}; {state}, and no earlier model held", definition)
    state = f"did not hold ({run['verdict']})" if run is not None else "is not evaluated yet"
    return Serving(good["model_dir"], f"the last good model (strict pass {good['strict_pass']:.3f} on validation): "
                                      f"the compile of {trained['model_dir']} {state}", json.loads(good["definition"]))


def _promoted_since(store, workflow: str, trained: dict) -> dict | None:
    """The last promotion decision of the repair loop run on this compile's model, if any."""
    try:
        rows = store.read("promotions", workflow).sort("round")
    except (LookupError, FileNotFoundError):
        return None
    first, last = rows.row(0, named=True), rows.row(rows.height - 1, named=True)
    if first["candidate_dir"] == trained["model_dir"] and first["decided_at"] >= trained["trained_at"]:
        return last
    return None


SERVING_MODELS = "serving_models"


def serving_row(store, workflow: str, data_dir: Path) -> dict:
    """The ``serving_models`` row of ``workflow``: which model serves it (its folder relative to the
    data folder, and the version of its weights ``subterra serve`` reports), why, since when, and
    its deployed route's strict pass on the validation and test sets."""
    from subterra.deployment import model_version
    from subterra.routes import DEPLOYED

    serving = serving_model(store, workflow)
    folder = Path(serving.model_dir)
    folder = folder if folder.is_absolute() else Path(data_dir) / folder
    try:
        shown = str(folder.resolve().relative_to(Path(data_dir).resolve()))
    except ValueError:
        shown = str(folder)
    version = model_version(folder)
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        last = store.read(SERVING_MODELS, workflow).row(0, named=True)
        if last["version"] == version:
            since = last["since"]
    except (LookupError, FileNotFoundError):
        pass
    row = {"workflow": workflow, "model_dir": shown, "version": version, "why": serving.why, "since": since}
    try:
        scores = store.read("eval_scores", workflow).filter(pl.col("route") == DEPLOYED)
        by_set = {r["set"]: r for r in scores.iter_rows(named=True)}
    except (LookupError, FileNotFoundError):
        by_set = {}
    for name in ("validation", "validation_natural", "natural", "test_unseen", "holdout"):
        got = by_set.get(name)
        row[f"{name}_strict_pass"] = got["strict_pass"] if got else None
        row[f"{name}_n"] = got["scenarios"] if got else None
    return row
