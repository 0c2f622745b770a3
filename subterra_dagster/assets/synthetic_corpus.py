import json

import dagster as dg

from subterra_dagster.assets.loading import snapshot
from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.tables import upstream
from subterra_dagster.assets.settings import CorpusSettings
from subterra_dagster.resources import ClaudeResource, SettingsResource, StoreResource, TeacherResource


READS = ('workflow_definitions', 'workflow_paths', 'synthetic_corpus')  # the tables this asset reads (assets.tables)


@dg.asset(partitions_def=workflows_partitions, deps=upstream("synthetic_corpus", READS), group_name="compile", kinds={"duckdb"})
def synthetic_corpus(
    context: dg.AssetExecutionContext,
    config: CorpusSettings,
    settings: SettingsResource,
    store: StoreResource,
    teacher: TeacherResource,
    claude: ClaudeResource,
) -> dg.MaterializeResult:
    """Teacher-written conversations over every selected path, plus two holdouts (seen / unseen phrasings).

    The teacher is Claude when the claude resource names it and the key is set (every answer kept as
    it arrives, so a rerun requests only what is missing); otherwise the offline template teacher."""
    import polars as pl

    from subterra.corpus import build_corpus
    from subterra.incremental import Reuse
    from subterra.paths import paths_from_table

    db = store.get()
    wf = snapshot(db, context.partition_key)
    paths = paths_from_table(db.read("workflow_paths", wf.id))
    setup = claude.get()
    answers = None
    if setup.uses("teacher"):
        from subterra.claude_spool import answers_for
        from subterra.claude_teacher import ClaudeTeacher

        answers = answers_for(setup, settings.get().claude_dir, wf.id, say=context.log.info)
        writer = ClaudeTeacher(answers, setup.settings.teacher_model, setup.settings.teacher_mode, seed=teacher.seed)
    else:
        writer = teacher.get()
    reuse = Reuse(_previous_corpus(db, wf.id) if config.recompile == "incremental" else None)
    corpus = build_corpus(
        wf, paths, writer, config.corpus_config(),
        progress=lambda done, total: context.log.info(f"corpus: {done}/{total} conversations"),
        reuse=reuse,
    )
    db.replace_partition("synthetic_corpus", wf.id, corpus)
    splits = dict(corpus.group_by("split").len().iter_rows())
    offscript = corpus.select(pl.col("offscript").explode()).drop_nulls().group_by("offscript").len()
    return dg.MaterializeResult(
        metadata={
            **{f"conversations_{k}": int(v) for k, v in splits.items()},
            "assistant_turns_train": int(corpus.filter(pl.col("split") == "train")["n_turns"].sum()),
            "offscript_turns": dg.MetadataValue.md(offscript.to_pandas().to_markdown(index=False)),
            "teacher": writer.name,
            "teacher_claude": setup.status()["teacher"],
            "teacher_usd": float(corpus["teacher_usd"].sum()),
            "teacher_tokens_in": int(corpus["teacher_tokens_in"].sum()),
            "teacher_tokens_out": int(corpus["teacher_tokens_out"].sum()),
            "teacher_malformed": int(corpus["teacher_error"].is_not_null().sum()),
            **({"teacher_answers_requested": int(answers.received["teacher"]),
                "teacher_answers_kept_from_before": int(answers.reused["teacher"])} if answers else {}),
            "recompile": config.recompile,
            "conversations_reused": reuse.reused,
            "conversations_generated": reuse.generated,
            "sample_conversation": dg.MetadataValue.json(json.loads(corpus["messages"][-1])),
        }
    )


def _previous_corpus(db, workflow: str):
    """The corpus of this workflow's last compile, if there is one."""
    try:
        return db.read("synthetic_corpus", workflow)
    except (LookupError, FileNotFoundError):
        return None
