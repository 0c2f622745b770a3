import base64
import json
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from subterra_dagster.assets.loading import snapshot
from subterra_dagster.assets.metadata import readable
from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.tables import upstream
from subterra_dagster.assets.settings import TrainedWeightsSettings
from subterra_dagster.resources import SettingsResource, StoreResource, launch_training


READS = ('workflow_definitions', 'corpus_checks', 'validated_dataset', 'trained_weights')  # the tables this asset reads (assets.tables)


@dg.asset(partitions_def=workflows_partitions, deps=upstream("trained_weights", READS), group_name="compile", kinds={"pytorch"},
          pool="subterra_training")  # dagster_instance.yaml: one training at a time
def trained_weights(
    context: dg.AssetExecutionContext,
    config: TrainedWeightsSettings,
    settings: SettingsResource,
    store: StoreResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Full-parameter SFT of the student (TRL SFTTrainer), run as its own process through Dagster Pipes.

    A recompile (``recompile: incremental``, the default) continues from the last good weights
    (the last model whose evaluation held, not a compile that came out broken) on a mix weighted
    toward the conversations that model was not trained on (by their text:
    ``subterra.incremental.conversation_hashes``); if there are none, its weights are kept as
    they are. With no good model yet, training starts from scratch."""
    import shutil

    import polars as pl

    from subterra.atomic import atomic_path, replace_dir, write_bytes
    from subterra.incremental import conversation_hashes, plan_training
    from subterra.plots import loss_curve_png
    from subterra.tokenizer import workflow_atoms
    from subterra.training import RESULT_FILE, TrainResult

    db = store.get()
    paths = settings.get()
    wf = snapshot(db, context.partition_key)
    failed = db.read("corpus_checks", wf.id).filter(~pl.col("success"))["expectation"].to_list()
    if failed:  # the blocking check stops a run; this also stops a later run of this asset alone
        raise dg.Failure(f"{wf.id}: the corpus failed its quality gate ({'; '.join(failed)}); not training on it")
    train = db.read("validated_dataset", wf.id).filter(pl.col("split") == "train")
    learnt = conversation_hashes(train["messages"])  # what this run's model will have been trained on
    run_dir = paths.run_dir(wf.id, wf.short_hash)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_file = run_dir / "train.parquet"
    train_config = config.train_config(
        workflow=wf.id, train_data=str(train_file), workflow_atoms=workflow_atoms(wf), data_dir=str(paths.data_dir),
    )
    previous = _previous_training(db, wf.id, context.log.info) if config.recompile == "incremental" else None
    if previous and previous.get("model_dir"):  # where its folder is now (the data folder may have moved)
        previous = {**previous, "model_dir": db.located(previous["model_dir"])}
    plan = plan_training(previous, train_config, learnt, train["path_hash"].to_list(), config.mix())
    context.log.info(f"{wf.id}: {plan.why}")
    start, mix = plan.start, plan.mix
    if mix is not None:
        train = train.with_columns(pl.Series("weight", mix.weights, dtype=pl.Int64))
    with atomic_path(train_file) as tmp:  # a crash never leaves half a Parquet file for the next run to train on
        train.write_parquet(tmp)
    # one folder per training (its settings, starting weights and data), not per definition: a
    # retrain of the same definition (another seed, a full recompile, a revert) never overwrites
    # the model that serves it; the same training again (a rerun after a crash) finds its folder
    # and checkpoints
    model_dir = paths.model_dir(wf.id, f"{wf.short_hash}-{train_config.fingerprint()[:8]}")
    train_config.output_dir = str(model_dir)
    config_file = run_dir / "train_config.json"
    reported = None
    if plan.keeps_weights:
        train_config.to_json(config_file)
        if Path(start).resolve() != model_dir.resolve():
            staging = model_dir.with_name(model_dir.name + ".staging")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(start, staging)
            replace_dir(staging, model_dir)  # whole or not at all, like a trained folder
        context.log.info(f"{wf.id}: {start} was trained on every one of these conversations; its weights are kept")
        result = TrainResult.from_json(model_dir / RESULT_FILE)
    else:
        reported, result = launch_training(context, pipes_subprocess_client, train_config, config_file)
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
        "recompile": "full" if start is None else "incremental",
        "continued_from": start,
        "changed_conversations": mix.changed if mix else int(train.height),
    }
    frame = pl.DataFrame([row], schema_overrides={"continued_from": pl.String}).with_columns(
        pl.Series("path_hashes", [sorted(set(train["path_hash"]))], dtype=pl.List(pl.String)),
        pl.Series("conversation_hashes", [sorted(set(learnt))], dtype=pl.List(pl.String)),
    )
    db.replace_partition("trained_weights", wf.id, frame)
    plot = loss_curve_png(result.loss_curve, f"{wf.id}: training loss")
    plot_file = run_dir / "loss_curve.png"
    write_bytes(plot_file, plot)
    return dg.MaterializeResult(
        metadata={
            **((reported.metadata or {}) if reported else {}),
            **readable({k: v for k, v in row.items() if k not in ("workflow", "content_hash", "definition", "path_hashes")}),
            "optimizer_resumed": result.optimizer_resumed,  # parameters whose Adam state came from the model continued
            "train_config": dg.MetadataValue.path(str(config_file)),
            "model_dir": dg.MetadataValue.path(str(model_dir)),
            "loss_curve": dg.MetadataValue.md(f"![loss](data:image/png;base64,{base64.b64encode(plot).decode()})"),
            "loss_curve_png": dg.MetadataValue.path(str(plot_file)),
        }
    )


def _previous_training(db, workflow: str, log) -> dict | None:
    """The trained_weights row of this workflow's last good model (the last one whose evaluation
    held: ``subterra.serving``), if there is one: a compile that came out broken is not continued."""
    from subterra.serving import last_good_model

    good = last_good_model(db, workflow)
    if good is None:
        try:
            last = db.read("trained_weights", workflow).row(0, named=True)
        except (LookupError, FileNotFoundError):
            return None
        log(f"{workflow}: no model of this workflow has held on its holdout yet (the last one, {last['model_dir']}, "
            f"did not, or was not evaluated): nothing to continue from, training from scratch")
    return good
