import dagster as dg

from subterra_dagster.assets.loading import snapshot
from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.tables import upstream
from subterra_dagster.assets.settings import TrainingSettings
from subterra_dagster.resources import SettingsResource, StoreResource

CHECK = "corpus_quality_gate"


READS = ('workflow_definitions', 'synthetic_corpus')  # the tables this asset reads (assets.tables)


@dg.asset(
    partitions_def=workflows_partitions,
    deps=upstream("validated_dataset", READS),
    group_name="compile",
    kinds={"duckdb", "great_expectations"},
    check_specs=[dg.AssetCheckSpec(CHECK, asset="validated_dataset", blocking=True,
                                   description="great-expectations suite over the corpus; training never starts if it fails")],
)
def validated_dataset(context: dg.AssetExecutionContext, config: TrainingSettings, settings: SettingsResource, store: StoreResource):
    """The corpus with token lengths, gated by a great-expectations suite (a blocking check).

    Malformed conversations (a teacher model's output that is no conversation, or one a row check
    fails on) are rejected first: listed in ``rejected_conversations``, never trained on."""
    import polars as pl

    from subterra.quality import screen_corpus, validate_corpus
    from subterra.tokenizer import workflow_atoms
    from subterra.training import measure_lengths

    db = store.get()
    wf = snapshot(db, context.partition_key)
    corpus, rejected = screen_corpus(db.read("synthetic_corpus", wf.id), wf)
    train_config = config.train_config(workflow_atoms=workflow_atoms(wf), data_dir=str(settings.get().data_dir))
    corpus = corpus.with_columns(pl.Series("n_tokens", measure_lengths(corpus, wf, train_config), dtype=pl.Int64))
    result = validate_corpus(corpus, wf, config.max_length, rejected=rejected.height)
    checks = pl.DataFrame([{**r, "workflow": wf.id} for r in result.results]).select("workflow", "expectation", "success", "observed")
    # never one without the others
    db.replace_partitions(wf.id, {"validated_dataset": corpus, "rejected_conversations": rejected, "corpus_checks": checks})
    yield dg.MaterializeResult(
        metadata={
            "conversations": corpus.height,
            "rejected_conversations": rejected.height,
            "tokens_train": int(corpus.filter(pl.col("split") == "train")["n_tokens"].sum()),
            "max_tokens": int(corpus["n_tokens"].max()),
            "gate_passed": result.success,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK,
                passed=result.success,
                severity=dg.AssetCheckSeverity.ERROR,
                description=f"{wf.id}: the corpus gate {'passed' if result.success else 'failed'}",
                metadata={"workflow": wf.id, "expectations": dg.MetadataValue.md(result.markdown())},
            )
        ],
    )
