"""Continued-training mixes on the compiles ``bench-e2e`` kept: does an incremental recompile stay
the model it continues?

``bench-e2e --data-dir D`` leaves, per seed, the first compile (model folder and its
``train.parquet``) and the edited workflow's corpus (the full recompile's ``train.parquet``) in
``D/seed-N``. This script continues each first compile on the edit's mix, once per mix given
(``--mix PASSES:REPLAY:CAP``, the ``trained_weights`` settings ``changed_passes``,
``replay_ratio``, ``max_fraction``), the way ``trained_weights`` does (``training_mix``, one epoch
at ``continue_learning_rate``, the first compile's own training settings and seed), and evaluates
it on the seed's holdouts like ``eval_scores`` (the deployed route). The baseline is the first
compile itself, evaluated on the same scenarios: a continued run's own change is its strict pass
minus its base's, paired per seed. The full recompile's score is printed beside it.

    python -m bench.bench_continue --data-dir /tmp/e2e-data --mix 3:0.655:0.35 --mix 3:2:0.35

(for bench-e2e's edit, 145 of 688 conversations new to the model, ``3:0.655:0.35`` is the mix
before replay kept its ratio under the cap: 145 changed beside 95 replayed; ``3:2:0.35``, the
default, 80 beside 160).

About 2.5 minutes per seed and mix (120 steps and 400 scenarios for the default cap).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.bench_e2e import EDIT, WORKFLOW
from bench.common import header, set_threads


def compiles(seed_dir: Path) -> tuple[Path, Path, Path]:
    """(first compile's model folder, its train.parquet, the edited workflow's train.parquet)."""
    import polars as pl

    first = edited = None
    for run in sorted((seed_dir / "runs" / WORKFLOW).iterdir()):
        data = pl.read_parquet(run / "train.parquet")
        if "weight" in data.columns:  # an incremental run's mix (bench-e2e's full recompile overwrites it)
            continue
        if data["messages"].str.contains(EDIT[0], literal=True).any():
            first = run
        elif data["messages"].str.contains(EDIT[1], literal=True).any():
            edited = run
    if first is None or edited is None:
        raise SystemExit(f"{seed_dir}: no first compile and edited corpus of a bench-e2e run")
    return seed_dir / "models" / WORKFLOW / first.name, first / "train.parquet", edited / "train.parquet"


def evaluate_model(model_dir: str, seed_dir: Path) -> dict[str, float]:
    """Strict pass per holdout of the deployed route, on the seed's holdout scenarios."""
    import polars as pl

    from subterra.evaluation import EvalConfig, evaluate
    from subterra.routes import DEPLOYED, local_routes
    from subterra.store import Store
    from subterra.workflow import Workflow

    store = Store(seed_dir / "subterra.duckdb")
    rows = store.read("validated_dataset", WORKFLOW)
    wf = Workflow.from_dict(json.loads(store.read("trained_weights", WORKFLOW)["definition"][0]))
    result = evaluate(local_routes([DEPLOYED], None, model_dir), wf, rows, EvalConfig(routes=(DEPLOYED,)))
    return dict(result.scores.filter(pl.col("route") == DEPLOYED).select("holdout", "strict_pass").iter_rows())


def continued(seed_dir: Path, mix_spec: str, out: Path) -> tuple[dict[str, float], int, int]:
    """Continue the seed's first compile on the edit's mix; (scores, steps, changed rows seen)."""
    import polars as pl

    from assets.training_config import TrainedWeightsSettings
    from subterra.incremental import MixConfig, conversation_hashes, training_mix
    from subterra.training import TrainConfig, train

    model, first_data, edited_data = compiles(seed_dir)
    passes, replay, cap = (float(x) for x in mix_spec.split(":"))
    before = TrainConfig.from_json(model / "train_config.json")
    edited = pl.read_parquet(edited_data)
    known = set(conversation_hashes(pl.read_parquet(first_data)["messages"]))
    hashes = conversation_hashes(edited["messages"])
    mix = training_mix(hashes, known, MixConfig(passes, replay, TrainedWeightsSettings().min_fraction, cap), before.seed)
    data = out / "train.parquet"
    edited.with_columns(pl.Series("weight", mix.weights, dtype=pl.Int64)).write_parquet(data)
    before.train_data, before.output_dir, before.checkpoint_dir = str(data), str(out / "model"), ""
    before.init_from, before.epochs, before.max_steps, before.max_tokens = str(model), 1.0, -1, 0
    before.learning_rate = TrainedWeightsSettings().continue_learning_rate
    result = train(before)
    seen = sum(w for w, h in zip(mix.weights, hashes) if h not in known)
    return evaluate_model(str(out / "model"), seed_dir), result.steps, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a bench-e2e --data-dir folder")
    parser.add_argument("--mix", action="append", help="PASSES:REPLAY:CAP (repeatable; default: trained_weights' settings)")
    args = parser.parse_args()
    import polars as pl

    from assets.training_config import TrainedWeightsSettings
    from subterra.routes import DEPLOYED
    from subterra.store import Store

    defaults = TrainedWeightsSettings()
    mixes = args.mix or [f"{defaults.changed_passes}:{defaults.replay_ratio}:{defaults.max_fraction}"]
    set_threads()
    header("continued training on bench-e2e's edit: each mix against the model it continues")
    seeds = sorted(p for p in Path(args.data_dir).glob("seed-*") if p.is_dir())
    own: dict[str, list[float]] = {m: [] for m in mixes}
    for seed_dir in seeds:
        model, _, _ = compiles(seed_dir)
        base = evaluate_model(str(model), seed_dir)["holdout"]
        last = Store(seed_dir / "subterra.duckdb").read("eval_scores", WORKFLOW)
        full = last.filter((pl.col("route") == DEPLOYED) & (pl.col("holdout") == "holdout"))["strict_pass"]
        full = full[0] if full.len() else None
        print(f"\n{seed_dir.name}: first compile holdout strict pass {base:.3f}"
              + (f"; last compile in the folder (bench-e2e: the full recompile) {full:.3f}" if full is not None else ""), flush=True)
        for spec in mixes:
            with tempfile.TemporaryDirectory() as folder:
                scores, steps, seen = continued(seed_dir, spec, Path(folder))
            change = (scores["holdout"] - base) * 100
            own[spec].append(change)
            print(f"  mix {spec}: {steps} steps, changed rows seen {seen}: holdout {scores['holdout']:.3f} "
                  f"({change:+.1f} points against its base)", flush=True)
    print("\n== over the seeds ==")
    for spec, changes in own.items():
        sd = f", sd {statistics.stdev(changes):.1f}" if len(changes) > 1 else ""
        print(f"mix {spec}: the continued run's own change {statistics.fmean(changes):+.1f} points{sd}, "
              f"per seed {[f'{c:+.1f}' for c in changes]}")


if __name__ == "__main__":
    main()
