"""The training script: ``python -m subterra.cli.train --config CONFIG.json``.

A TRL-style script driven by a config file (``subterra.training.TrainConfig`` as JSON). Launched
by the ``trained_weights`` asset through Dagster Pipes it streams progress as log lines and ends
with a materialization report; launched by hand (or by ``accelerate launch`` on a GPU machine) it
prints the same progress. Exit status is non-zero if training fails, which fails the asset.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="subterra-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="TrainConfig JSON file")
    args = parser.parse_args(argv)

    from subterra.training import TrainConfig

    config = TrainConfig.from_json(args.config)
    # a daemon started from a background shell hands its children SIGINT ignored: the stop still counts
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run(config)
    except KeyboardInterrupt:  # a run terminated from the UI (Pipes forwards it as SIGINT), or Ctrl-C
        print(f"training interrupted; its checkpoints stay in {config.checkpoint_dir or config.output_dir + '.checkpoints'} "
              "and a rerun with the same settings resumes from the last one", file=sys.stderr, flush=True)
        return 130


def _run(config) -> int:
    from subterra.training import train

    if os.environ.get("DAGSTER_PIPES_CONTEXT"):
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:
            def report(entry: dict) -> None:
                pipes.log.info(
                    f"step {entry['step']}/{entry['max_steps']} loss {entry['loss']:.4f} ({entry['elapsed_s']} s)"
                )

            result = train(config, on_log=report)
            pipes.report_asset_materialization(
                metadata={
                    "params": result.params,
                    "steps": result.steps,
                    "train_seconds": result.train_seconds,
                    "tokens_per_second": result.tokens_per_second,
                    "final_loss": result.final_loss,
                    "model_dir": {"raw_value": result.model_dir, "type": "path"},
                }
            )
    else:
        result = train(config, on_log=lambda e: print(json.dumps(e), flush=True))
    print(json.dumps({"done": True, "model_dir": result.model_dir, "steps": result.steps}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
