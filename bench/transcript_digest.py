"""The eval's transcript digest: the check that a change preserves behaviour.

    python -m bench.transcript_digest travel_booking [--model DIR] [--scenarios N] [--train-steps N]

Plays the serving model (or ``--model``) on the validation sets with a fixed seed and prints one
sha256 over every played conversation (user lines, chosen steps, slots, says; no timings) and the
scores. With ``--train-steps N`` it first trains the tiny student from the validated corpus for N
steps with a fixed seed and adds the digest of its weights, so a change to training is checked too.
The same digests before and after a refactoring mean the same behaviour. Test sets are never played.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import polars as pl
import torch

from subterra.evaluation import EvalConfig, evaluate
from subterra.natural import load_natural_sets
from subterra.routes import DEPLOYED, local_routes
from subterra.serving import serving_model
from subterra.settings import Settings
from subterra.store import Store
from subterra.workflow import Workflow

PLAYED = ["route", "set", "scenario_id", "strict_pass", "partial_credit", "turns", "first_error", "transcript"]


def played_digest(scenarios: pl.DataFrame) -> str:
    rows = scenarios.select(PLAYED).sort(["route", "set", "scenario_id"]).iter_rows()
    return hashlib.sha256(json.dumps(list(rows), default=str).encode()).hexdigest()[:16]


def weights_digest(model_dir: Path) -> str:
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for file in sorted(model_dir.glob("*.safetensors")):
        for name, tensor in sorted(load_file(str(file)).items()):
            h.update(name.encode())
            h.update(tensor.float().numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow")
    parser.add_argument("--model", default="", help="a compiled model folder (default: the one serving)")
    parser.add_argument("--scenarios", type=int, default=40)
    parser.add_argument("--train-steps", type=int, default=0, help="train a tiny student first (fixed seed)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    settings = Settings.from_env()
    store = Store(settings.db_path)
    rows = store.read("validated_dataset", args.workflow)
    model = args.model or serving_model(store, args.workflow).model_dir
    trained = store.read("trained_weights", args.workflow)
    wf = Workflow.from_dict(json.loads(trained["definition"][0]))
    if args.train_steps:
        from subterra.tokenizer import workflow_atoms
        from subterra.training import TrainConfig, train

        out = Path(tempfile.mkdtemp(prefix="digest-")) / "model"
        corpus = out.parent / "corpus.parquet"
        rows.write_parquet(corpus)
        train(TrainConfig(workflow=wf.id, train_data=str(corpus), output_dir=str(out), max_steps=args.train_steps,
                          hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, seed=0,
                          batch_size=16, learning_rate=2e-3, max_length=1536, max_tokens=0, logging_steps=10,
                          workflow_atoms=workflow_atoms(wf)))
        print(f"weights {weights_digest(out)} ({args.train_steps} steps from the validated corpus)")
        model = str(out)
    natural, _ = load_natural_sets(wf, settings.natural_dir)
    natural = {k: v for k, v in natural.items() if k == "validation_natural"}
    config = EvalConfig(scenarios=args.scenarios, batch_size=64, sets=("validation",), routes=(DEPLOYED,))
    result = evaluate(local_routes([DEPLOYED], None, model), wf, rows, config, natural=natural)
    scores = "; ".join(f"{r['set']} {r['strict_pass']:.3f}/{r['partial_credit']:.3f} n {r['scenarios']}"
                       for r in result.scores.iter_rows(named=True))
    print(f"transcripts {played_digest(result.scenarios)} ({scores})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
