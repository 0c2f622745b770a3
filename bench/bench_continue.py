"""Continued-training mixes on the compiles ``bench-e2e`` kept: does an incremental recompile stay
the model it continues?

``bench-e2e --data-dir D`` leaves, per seed, the first compile (model folder and its
``train.parquet``) and the edited workflow's corpus (the full recompile's ``train.parquet``) in
``D/seed-N``. This script continues each first compile on the edit's mix, once per mix given
(``--mix PASSES:REPLAY:CAP[:LEARNING_RATE]``, the ``trained_weights`` settings ``changed_passes``,
``replay_ratio``, ``max_fraction`` and ``continue_learning_rate``), the way ``trained_weights`` does (``training_mix``, one epoch
at ``continue_learning_rate``, the first compile's own training settings and seed), and evaluates
it on the seed's holdouts like ``eval_scores`` (the deployed route). The baseline is the first
compile itself, evaluated on the same scenarios: a continued run's own change is its strict pass
minus its base's, paired per seed. The full recompile's score is printed beside it, and whether
the edit was learnt (``bench_e2e.edit_preferred_by``: in how many held-out conversations the
continued model finds the new say line more likely than the old one). ``--optimizer fresh``
continues with a fresh Adam instead of the one the first compile's folder kept (``optimizer.pt``,
what ``trained_weights`` resumes); give both to compare them on the same bases.

    python -m bench.bench_continue --data-dir /tmp/e2e-data --mix 3:0.655:0.35 --mix 3:2:0.35
    python -m bench.bench_continue --data-dir /tmp/e2e-data --optimizer resumed --optimizer fresh

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
from dataclasses import dataclass
from pathlib import Path

from bench.bench_e2e import EDIT, WORKFLOW, edit_preferred_by
from bench.common import header, set_threads


@dataclass
class SeedCompiles:
    """What one seed folder of a bench-e2e run holds, read once: the first compile's model folder
    and the texts it was trained on, the edited workflow's corpus, its holdout rows and workflow,
    and the last compile's (the full recompile's) holdout strict pass."""

    folder: Path
    model: Path
    known: set[str]
    edited: object  # polars DataFrame: the edited workflow's train rows
    rows: object  # polars DataFrame: the validated dataset the holdouts come from
    wf: object
    full: float | None

    @classmethod
    def read(cls, seed_dir: Path) -> "SeedCompiles":
        import polars as pl

        from subterra.incremental import conversation_hashes
        from subterra.routes import DEPLOYED
        from subterra.store import Store
        from subterra.workflow import Workflow

        first = edited = None
        for run in sorted((seed_dir / "runs" / WORKFLOW).iterdir()):
            data = pl.read_parquet(run / "train.parquet")
            if "weight" in data.columns:  # an incremental run's mix (bench-e2e's full recompile overwrites it)
                continue
            if data["messages"].str.contains(EDIT[0], literal=True).any():
                first = (run, data)
            elif data["messages"].str.contains(EDIT[1], literal=True).any():
                edited = data
        if first is None or edited is None:
            raise SystemExit(f"{seed_dir}: no first compile and edited corpus of a bench-e2e run")
        store = Store(seed_dir / "subterra.duckdb")
        wf = Workflow.from_dict(json.loads(store.read("trained_weights", WORKFLOW)["definition"][0]))
        last = store.read("eval_scores", WORKFLOW)
        full = last.filter((pl.col("route") == DEPLOYED) & (pl.col("set") == "holdout"))["strict_pass"]
        # the first compile's model: its definition's folder (HASH-TRAINING; HASH before there was one per training)
        models = [p for p in (seed_dir / "models" / WORKFLOW).glob(f"{first[0].name}*")
                  if (p / "model.safetensors").exists() and "repair" not in p.name]
        if len(models) != 1:
            raise SystemExit(f"{seed_dir}: {len(models)} models of the first compile's definition; expected one")
        return cls(seed_dir, models[0], set(conversation_hashes(first[1]["messages"])),
                   edited, store.read("validated_dataset", WORKFLOW), wf, full[0] if full.len() else None)

    def evaluate(self, model_dir: str) -> dict[str, float]:
        """Strict pass per holdout of the deployed route, on the seed's holdout scenarios."""
        import polars as pl

        from subterra.evaluation import EvalConfig, evaluate
        from subterra.routes import DEPLOYED, local_routes

        result = evaluate(local_routes([DEPLOYED], None, model_dir), self.wf, self.rows, EvalConfig(routes=(DEPLOYED,)))
        return dict(result.scores.filter(pl.col("route") == DEPLOYED).select("set", "strict_pass").iter_rows())


def continued(seed: SeedCompiles, mix_spec: str, out: Path, optimizer: str = "resumed") -> tuple[dict[str, float], int, int, tuple[int, int]]:
    """Continue the seed's first compile on the edit's mix, with the optimizer state its folder
    kept (``resumed``; a fresh Adam where it kept none) or a ``fresh`` Adam; (scores, steps, changed
    rows seen, (held-out conversations at the edited line, of which the new line is the more likely))."""
    import polars as pl

    from subterra.incremental import MixConfig, conversation_hashes, training_mix
    from subterra.training import TrainConfig, train

    settings = MixConfig()
    passes, replay, cap, rate = ([float(x) for x in mix_spec.split(":")] + [settings.continue_learning_rate])[:4]
    before = TrainConfig.from_json(seed.model / "train_config.json")
    hashes = conversation_hashes(seed.edited["messages"])
    mix = training_mix(hashes, seed.known, MixConfig(passes, replay, settings.min_fraction, cap), before.seed)
    data = out / "train.parquet"
    seed.edited.with_columns(pl.Series("weight", mix.weights, dtype=pl.Int64)).write_parquet(data)
    before.train_data, before.output_dir, before.checkpoint_dir = str(data), str(out / "model"), ""
    before.init_from, before.epochs, before.max_steps, before.max_tokens = str(seed.model), 1.0, -1, 0
    before.learning_rate, before.optimizer_state = rate, optimizer == "resumed"
    result = train(before)
    seen = sum(w for w, h in zip(mix.weights, hashes) if h not in seed.known)
    return seed.evaluate(str(out / "model")), result.steps, seen, edit_preferred_by(str(out / "model"), seed.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a bench-e2e --data-dir folder")
    parser.add_argument("--mix", action="append",
                        help="PASSES:REPLAY:CAP[:LEARNING_RATE] (repeatable; default: trained_weights' settings)")
    parser.add_argument("--optimizer", action="append", choices=["resumed", "fresh"],
                        help="the first compile's optimizer state resumed, or a fresh Adam (repeatable; default: resumed)")
    args = parser.parse_args()
    from subterra.incremental import MixConfig

    defaults = MixConfig()
    mixes = [(spec, optimizer) for spec in args.mix or [f"{defaults.changed_passes}:{defaults.replay_ratio}:{defaults.max_fraction}"]
             for optimizer in args.optimizer or ["resumed"]]
    set_threads()
    header("continued training on bench-e2e's edit: each mix against the model it continues")
    seeds = sorted(p for p in Path(args.data_dir).glob("seed-*") if p.is_dir())
    own: dict[tuple[str, str], list[float]] = {m: [] for m in mixes}
    learnt: dict[tuple[str, str], list[tuple[int, int]]] = {m: [] for m in mixes}
    for seed_dir in seeds:
        seed = SeedCompiles.read(seed_dir)
        base = seed.evaluate(str(seed.model))["holdout"]
        print(f"\n{seed_dir.name}: first compile holdout strict pass {base:.3f}"
              + (f"; last compile in the folder (bench-e2e: the full recompile) {seed.full:.3f}" if seed.full is not None else ""), flush=True)
        for spec, optimizer in mixes:
            with tempfile.TemporaryDirectory() as folder:
                scores, steps, seen, (at_edit, preferred) = continued(seed, spec, Path(folder), optimizer)
            change = (scores["holdout"] - base) * 100
            own[spec, optimizer].append(change)
            learnt[spec, optimizer].append((at_edit, preferred))
            print(f"  mix {spec}, {optimizer} Adam: {steps} steps, changed rows seen {seen}: holdout {scores['holdout']:.3f} "
                  f"({change:+.1f} points against its base); the edited line learnt in {preferred}/{at_edit}", flush=True)
    print("\n== over the seeds ==")
    for (spec, optimizer), changes in own.items():
        sd = f", sd {statistics.stdev(changes):.1f}" if len(changes) > 1 else ""
        print(f"mix {spec}, {optimizer} Adam: the continued run's own change {statistics.fmean(changes):+.1f} points{sd}, "
              f"per seed {[f'{c:+.1f}' for c in changes]}; the edited line learnt in "
              f"{sum(p for _, p in learnt[spec, optimizer])}/{sum(n for n, _ in learnt[spec, optimizer])} held-out conversations")


if __name__ == "__main__":
    main()
