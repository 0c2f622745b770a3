"""The quality gate over a corpus: a great-expectations suite, run before any training.

Helper columns are computed first (role order, empty texts, unfilled placeholders, form
validity, train/holdout overlap), then one expectation per promise over the conversations, and
one over a coverage table (every node and edge of the workflow in the training split). Every
result is reported, pass or fail, so the Dagster check shows the whole picture.

Before the suite, ``screen_corpus`` rejects single conversations that are malformed (a teacher
model's output that is no conversation, or one a row check fails on): they are kept out of
training and evaluation, listed with their reason, and the suite bounds their share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
import os
import re
from dataclasses import dataclass, field

import polars as pl

from subterra.forms import parse_form, shown_say

if TYPE_CHECKING:
    from subterra.workflow import Workflow

PLACEHOLDER = re.compile(r"\{[a-z][a-z0-9_]*\}")
SPLITS = ["train", "validation", "holdout", "test_unseen"]
COVERAGE = "every node and edge present in training"
MAX_REJECTED_SHARE = 0.05
REJECTED = f"teacher output rejected for at most {MAX_REJECTED_SHARE:.0%} of conversations"
REJECTED_SCHEMA = {"workflow": pl.String, "conversation_id": pl.String, "split": pl.String, "teacher": pl.String, "reason": pl.String}
# what makes two scenarios the same one, whatever split or phrasing set they were given
_SCENARIO_IDENTITY_IGNORES = ("id", "split", "phrasing")


@dataclass
class CorpusValidation:
    success: bool
    results: list[dict] = field(default_factory=list)  # {expectation, success, observed}

    @property
    def failed(self) -> list[str]:
        return [r["expectation"] for r in self.results if not r["success"]]

    def markdown(self) -> str:
        lines = ["| expectation | passed | observed |", "|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r['expectation']} | {'yes' if r['success'] else '**NO**'} | {r['observed']} |")
        return "\n".join(lines)


def conversation_facts(messages_json: str, node_ids: set[str]) -> dict:
    """The helper columns of one conversation."""
    try:
        messages = json.loads(messages_json)
        roles = [m.get("role") for m in messages]
    except (TypeError, AttributeError, json.JSONDecodeError):
        return {"roles_ok": False, "empty_texts": 1, "unfilled": 1, "bad_forms": 1}
    expected = ["system"] + ["user" if i % 2 == 0 else "assistant" for i in range(len(roles) - 1)]
    roles_ok = roles == expected and len(roles) >= 3 and roles[-1] == "assistant"
    texts = [str(m.get("content", "")) for m in messages]
    bad_forms = 0
    # a user's or the system's text has no placeholder; an assistant's say is a template whose
    # placeholders name only slots the conversation holds by then (the runtime fills those in)
    unfilled = sum(1 for m, t in zip(messages, texts) if m.get("role") != "assistant" and PLACEHOLDER.search(t))
    held: dict[str, str] = {}
    for before, m in zip([{}] + messages, messages):
        if m.get("role") != "assistant":
            continue
        try:
            form = parse_form(m["content"])
        except (ValueError, KeyError, TypeError):
            bad_forms += 1
            continue
        said = str(before.get("content", "")) if before.get("role") == "user" else ""
        if form.node not in node_ids or not form.say.strip() or not all(v and v in said for v in form.slots.values()):
            bad_forms += 1  # a slot value must be a verbatim span of the user's message before it
        held.update(form.slots)
        unfilled += int(not shown_say(form.say, held)[1])
    return {
        "roles_ok": roles_ok,
        "empty_texts": sum(1 for t in texts if not t.strip()),
        "unfilled": unfilled,
        "bad_forms": bad_forms,
    }


def _faults(facts: dict) -> str | None:
    faults = []
    if not facts["roles_ok"]:
        faults.append("roles out of order or too few turns")
    if facts["empty_texts"]:
        faults.append(f"{facts['empty_texts']} empty text(s)")
    if facts["unfilled"]:
        faults.append(f"{facts['unfilled']} unfilled placeholder(s)")
    if facts["bad_forms"]:
        faults.append(f"{facts['bad_forms']} bad form(s) (unparseable, unknown node, empty say, or a value not copied verbatim)")
    return "; ".join(faults) or None


def screen_corpus(corpus: pl.DataFrame, wf: Workflow) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the conversations fit to train and evaluate on, the rejected ones with their reason).

    A conversation is rejected when its teacher's output was malformed (``teacher_error``) or a
    row check of the gate fails on it: it is then neither trained on nor evaluated against, and
    the gate's ``REJECTED`` expectation bounds how many may be."""
    node_ids = set(wf.nodes)
    errors = corpus["teacher_error"].to_list() if "teacher_error" in corpus.columns else [None] * corpus.height
    reasons = [error or _faults(conversation_facts(m, node_ids)) for m, error in zip(corpus["messages"], errors)]
    marked = corpus.with_columns(pl.Series("reason", reasons, dtype=pl.String))
    rejected = marked.filter(pl.col("reason").is_not_null())
    rejected = rejected.select(
        pl.col("workflow"), pl.col("conversation_id"), pl.col("split"),
        pl.col("teacher") if "teacher" in corpus.columns else pl.lit(None, dtype=pl.String).alias("teacher"),
        pl.col("reason"),
    ).cast(REJECTED_SCHEMA)
    return marked.filter(pl.col("reason").is_null()).drop("reason"), rejected


def _scenario_identity(scenario_json: str) -> str:
    try:
        scenario = json.loads(scenario_json)
    except (TypeError, json.JSONDecodeError):
        return scenario_json or ""
    if not isinstance(scenario, dict):
        return scenario_json
    return json.dumps({k: v for k, v in scenario.items() if k not in _SCENARIO_IDENTITY_IGNORES}, sort_keys=True)


def _helper_frame(corpus: pl.DataFrame, node_ids: set[str]) -> pl.DataFrame:
    facts = pl.DataFrame([conversation_facts(m, node_ids) for m in corpus["messages"]],
                         schema={"roles_ok": pl.Boolean, "empty_texts": pl.Int64, "unfilled": pl.Int64, "bad_forms": pl.Int64})
    frame = pl.concat([corpus.select("conversation_id", "split", "messages", "scenario", "n_tokens"), facts], how="horizontal")
    frame = frame.with_columns(pl.col("scenario").map_elements(_scenario_identity, return_dtype=pl.String).alias("scenario_identity"))
    held = frame.filter(pl.col("split") != "train")
    return frame.with_columns(
        (
            (pl.col("split") == "train")
            & (pl.col("messages").is_in(held["messages"].implode()) | pl.col("scenario_identity").is_in(held["scenario_identity"].implode()))
        ).alias("train_in_holdout")
    ).drop("messages", "scenario", "scenario_identity")


def _gx_context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def validate_corpus(corpus: pl.DataFrame, wf: Workflow, max_length: int, rejected: int = 0) -> CorpusValidation:
    """Run the suite over ``corpus`` (the corpus table plus an ``n_tokens`` column); ``rejected``
    conversations were screened out of it before (``screen_corpus``)."""
    import great_expectations as gx
    import pandas as pd

    node_ids = set(wf.nodes)
    frame = _helper_frame(corpus, node_ids)
    train = corpus.filter(pl.col("split") == "train")
    seen_nodes = {n for nodes in train["nodes"] for n in nodes}
    seen_edges = {e for edges in train["edges"] for e in edges}
    coverage = pd.DataFrame(
        {
            "item": [f"node {n}" for n in wf.nodes] + [f"edge {e.id}" for e in wf.edges],
            "covered": [n in seen_nodes for n in wf.nodes] + [e.id in seen_edges for e in wf.edges],
        }
    )

    E = gx.expectations
    row_checks = {
        "roles alternate (system, user, assistant, ...) and end on the assistant": E.ExpectColumnValuesToBeInSet(column="roles_ok", value_set=[True]),
        "no empty text": E.ExpectColumnValuesToBeInSet(column="empty_texts", value_set=[0]),
        "no unfilled {placeholder}": E.ExpectColumnValuesToBeInSet(column="unfilled", value_set=[0]),
        "every form parses, names a real node and copies its values verbatim": E.ExpectColumnValuesToBeInSet(column="bad_forms", value_set=[0]),
        f"length under the training maximum ({max_length} tokens)": E.ExpectColumnValuesToBeBetween(
            column="n_tokens", min_value=1, max_value=max_length
        ),
        "train and holdout disjoint (no conversation text or scenario in both)": E.ExpectColumnValuesToBeInSet(
            column="train_in_holdout", value_set=[False]
        ),
        "conversation ids unique": E.ExpectColumnValuesToBeUnique(column="conversation_id"),
        "splits are train, validation, holdout, test_unseen": E.ExpectColumnDistinctValuesToEqualSet(column="split", value_set=SPLITS),
    }
    context = _gx_context()
    source = context.data_sources.add_pandas("corpus")
    rows_batch = source.add_dataframe_asset("conversations").add_batch_definition_whole_dataframe("all")
    cover_batch = source.add_dataframe_asset("coverage").add_batch_definition_whole_dataframe("all")
    row_suite = gx.ExpectationSuite(name="corpus_rows", expectations=list(row_checks.values()))
    cover_suite = gx.ExpectationSuite(
        name="corpus_coverage", expectations=[E.ExpectColumnValuesToBeInSet(column="covered", value_set=[True])]
    )
    row_result = rows_batch.get_batch(batch_parameters={"dataframe": frame.to_pandas()}).validate(row_suite)
    cover_result = cover_batch.get_batch(batch_parameters={"dataframe": coverage}).validate(cover_suite)

    by_type_and_column = {(r.expectation_config.type, r.expectation_config.kwargs.get("column")): r for r in row_result.results}
    results = []
    for name, expectation in row_checks.items():
        r = by_type_and_column[(expectation.expectation_type, expectation.column)]
        if "unexpected_count" in r.result:
            observed = f"{r.result['unexpected_count']} of {r.result.get('element_count', frame.height)} unexpected"
        else:
            observed = str(r.result.get("observed_value"))
        results.append({"expectation": name, "success": bool(r.success), "observed": observed})
    total = frame.height + rejected
    results.append(
        {
            "expectation": REJECTED,
            "success": rejected <= MAX_REJECTED_SHARE * total,
            "observed": f"{rejected} of {total} rejected",
        }
    )
    missing = coverage.loc[~coverage["covered"], "item"].tolist()
    results.append(
        {
            "expectation": COVERAGE,
            "success": bool(cover_result.results[0].success),
            "observed": f"all {len(coverage)} covered" if not missing else "missing " + ", ".join(missing),
        }
    )
    return CorpusValidation(all(r["success"] for r in results), results)
