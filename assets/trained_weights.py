import base64
import json
import sys
from datetime import datetime, timezone

import dagster as dg

from assets.loading import snapshot
from assets.partitions import workflows_partitions
from assets.training_config import TrainingSettings
from assets.validated_dataset import validated_dataset
from resources import SettingsResource, StoreResource


@dg.asset(partitions_def=workflows_partitions, deps=[validated_dataset], group_name="compile", kinds={"pytorch"},
          pool="subterra_training")  # dagster.yaml: one training at a time
def trained_weights(
    context: dg.AssetExecutionContext,
    config: TrainingSettings,
    settings: SettingsResource,
    store: StoreResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Full-parameter SFT of the student (TRL SFTTrainer), run as its own process through Dagster Pipes."""
    import polars as pl

    from subterra.atomic import atomic_path, write_bytes
    from subterra.plots import loss_curve_png
    from subterra.tokenizer import workflow_atoms
    from subterra.training import RESULT_FILE, TrainResult

    db = store.get()
    paths = settings.get()
    wf = snapshot(db, context.partition_key)
    failed = db.read("corpus_checks", wf.id).filter(~pl.col("success"))["expectation"].to_list()
    if failed:  # the blocking check stops a run; this also stops a later run of this asset alone
        raise dg.Failure(f"{wf.id}: the corpus failed its quality gate ({'; '.join(failed)}); not training on it")
    corpus = db.read("validated_dataset", wf.id)
    run_dir = paths.run_dir(wf.id, wf.short_hash)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_file = run_dir / "train.parquet"
    with atomic_path(train_file) as tmp:  # a crash never leaves half a Parquet file for the next run to train on
        corpus.filter(pl.col("split") == "train").write_parquet(tmp)
    model_dir = paths.model_dir(wf.id, wf.short_hash)
    train_config = config.train_config(
        workflow=wf.id, train_data=str(train_file), output_dir=str(model_dir), workflow_atoms=workflow_atoms(wf)
    )
    config_file = run_dir / "train_config.json"
    train_config.to_json(config_file)
    reported = pipes_subprocess_client.run(
        command=[sys.executable, "-m", "subterra.cli.train", "--config", str(config_file)], context=context
    ).get_materialize_result()
    result = TrainResult.from_json(model_dir / RESULT_FILE)
    row = {
        "workflow": wf.id,
        "content_hash": wf.content_hash,
        "definition": json.dumps(wf.to_dict()),  # the workflow this model was compiled from (chat uses it)
        "model_dir": str(model_dir),
        "base_model": result.base_model,
        "params": result.params,
        "steps": result.steps,
        "epochs": result.epochs,
        "train_conversations": result.train_conversations,
        "train_tokens": result.train_tokens,
        "train_seconds": result.train_seconds,
        "tokens_per_second": result.tokens_per_second,
        "final_loss": result.final_loss,
        "device": result.device,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    db.replace_partition("trained_weights", wf.id, pl.DataFrame([row]))
    plot = loss_curve_png(result.loss_curve, f"{wf.id}: training loss")
    plot_file = run_dir / "loss_curve.png"
    write_bytes(plot_file, plot)
    return dg.MaterializeResult(
        metadata={
            **(reported.metadata or {}),
            **{k: v for k, v in row.items() if k not in ("workflow", "content_hash", "definition")},
            "train_config": dg.MetadataValue.path(str(config_file)),
            "model_dir": dg.MetadataValue.path(str(model_dir)),
            "loss_curve": dg.MetadataValue.md(f"![loss](data:image/png;base64,{base64.b64encode(plot).decode()})"),
            "loss_curve_png": dg.MetadataValue.path(str(plot_file)),
        }
    )
