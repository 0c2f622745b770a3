import json
from typing import Literal, Optional

import dagster as dg

from assets.loading import snapshot
from assets.partitions import workflows_partitions
from assets.workflow_paths import workflow_paths
from resources import ClaudeResource, SettingsResource, StoreResource, TeacherResource


class CorpusSettings(dg.Config):
    conversations_per_path: int = 8
    max_train_conversations: int = 800
    # how conversations are shared among paths: "uniform" (the same share each) or "workflow" (sized
    # so every edge and every enum value gets a floor of examples, a small workflow at least
    # min_train_conversations; subterra.sizing)
    sizing: Literal["uniform", "workflow"] = "workflow"
    min_train_conversations: int = 600
    edge_floor: int = 24
    value_floor: int = 12
    # per test set (holdout, test_unseen); None: sized from the paths, 2 per path within 100-200
    holdout_scenarios: Optional[int] = None
    validation_scenarios: Optional[int] = None  # None: as many as the holdout
    offscript_rate: float = 0.15
    train_offscript_rate: float | None = 0.3
    # of training's off-script turns, the share of corrections (None: a third): naming which slot an old
    # value was in is the hardest off-script skill (most holdout failures of travel_booking)
    train_correction_share: float | None = 0.5
    random_value_rate: float = 0.5
    # the user's generic lines (openers, unclear, off-topic, corrections): "core", the original pools, or
    # "wide", more variety (a pretrained student generalizes from it; the tiny one does worse with it)
    phrasings: Literal["core", "wide"] = "core"
    # of training conversations, those whose first message is the request itself ("a flight to Porto,
    # please") rather than a bare greeting; the held-out sets open half and half
    request_share: float = 0.0
    # of training answers, those typed as people type: lower case, no closing stop, a filler, a typo
    # outside the values (subterra.noise); the held-out sets are never perturbed
    noise_share: float = 0.0
    seed: int = 0
    max_conversations: int = 100_000
    # incremental: conversations of paths whose nodes and texts did not change are kept from the
    # previous corpus; full: every conversation is written again
    recompile: Literal["incremental", "full"] = "incremental"


@dg.asset(partitions_def=workflows_partitions, deps=[workflow_paths], group_name="compile", kinds={"duckdb"})
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

    from subterra.corpus import CorpusConfig, build_corpus
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
        wf, paths, writer, CorpusConfig(**config.model_dump(exclude={"recompile"})),
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
