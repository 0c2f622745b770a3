"""The quality gate over a corpus: a great-expectations suite, run before any training.

Helper columns are computed first (role order, empty texts, unfilled placeholders, form
validity, coverage), then one expectation per promise. Every result is reported, pass or fail.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import polars as pl

from subterra.forms import parse_form

PLACEHOLDER = re.compile(r"\{[a-z][a-z0-9_]*\}")


@dataclass
class CorpusValidation:
    success: bool
    results: list[dict] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| expectation | passed | observed |", "|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r['expectation']} | {'yes' if r['success'] else '**NO**'} | {r['observed']} |")
        return "\n".join(lines)


def _conversation_facts(messages_json: str, node_ids: set[str]) -> dict:
    try:
        messages = json.loads(messages_json)
    except (TypeError, json.JSONDecodeError):
        return {"roles_ok": False, "empty_texts": 1, "unfilled": 1, "bad_forms": 1}
    roles = [m.get("role") for m in messages]
    expected = ["system"] + ["user" if i % 2 == 0 else "assistant" for i in range(len(roles) - 1)]
    roles_ok = roles == expected and len(roles) >= 3 and roles[-1] == "assistant"
    empty = sum(1 for m in messages if not str(m.get("content", "")).strip())
    unfilled = sum(1 for m in messages if PLACEHOLDER.search(str(m.get("content", ""))))
    bad = 0
    for m in messages:
        if m.get("role") == "assistant":
            try:
                form = parse_form(m["content"])
                if form.node not in node_ids or not form.say.strip():
                    bad += 1
            except ValueError:
                bad += 1
    return {"roles_ok": roles_ok, "empty_texts": empty, "unfilled": unfilled, "bad_forms": bad}


def validate_corpus(corpus: pl.DataFrame, wf, max_length: int) -> CorpusValidation:
    """Run the suite over ``corpus`` (which has an ``n_tokens`` column)."""
    import great_expectations as gx
    import pandas as pd

    node_ids = set(wf.nodes)
    facts = pl.DataFrame([_conversation_facts(m, node_ids) for m in corpus["messages"]])
    frame = pl.concat([corpus.select("conversation_id", "split", "messages", "n_tokens"), facts], how="horizontal")
    train = corpus.filter(pl.col("split") == "train")
    seen_nodes = {n for nodes in train["nodes"] for n in nodes}
    seen_edges = {e for edges in train["edges"] for e in edges}
    missing_nodes = sorted(node_ids - seen_nodes)
    missing_edges = sorted({e.id for e in wf.edges} - seen_edges)
    held_texts = set(corpus.filter(pl.col("split") != "train")["messages"])
    frame = frame.with_columns(
        pl.col("messages").is_in(list(held_texts)).and_(pl.col("split") == "train").alias("train_in_holdout")
    )
    coverage = pd.DataFrame(
        {"kind": ["node"] * len(node_ids) + ["edge"] * len(wf.edges),
         "item": sorted(node_ids) + [e.id for e in wf.edges],
         "covered": [n in seen_nodes for n in sorted(node_ids)] + [e.id in seen_edges for e in wf.edges]}
    )

    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_pandas("corpus")
    rows_batch = source.add_dataframe_asset("conversations").add_batch_definition_whole_dataframe("all")
    cover_batch = source.add_dataframe_asset("coverage").add_batch_definition_whole_dataframe("all")
    E = gx.expectations
    row_suite = gx.ExpectationSuite(name="corpus_rows")
    row_checks = {
        "roles alternate (system, user, assistant, ...) and end on the assistant": E.ExpectColumnValuesToBeInSet(column="roles_ok", value_set=[True]),
        "no empty text": E.ExpectColumnValuesToBeInSet(column="empty_texts", value_set=[0]),
        "no unfilled {placeholder}": E.ExpectColumnValuesToBeInSet(column="unfilled", value_set=[0]),
        "every form parses and names a real node": E.ExpectColumnValuesToBeInSet(column="bad_forms", value_set=[0]),
        f"length under the training maximum ({max_length} tokens)": E.ExpectColumnValuesToBeBetween(column="n_tokens", min_value=1, max_value=max_length),
        "train and holdout disjoint": E.ExpectColumnValuesToBeInSet(column="train_in_holdout", value_set=[False]),
        "conversation ids unique": E.ExpectColumnValuesToBeUnique(column="conversation_id"),
        "splits are train, holdout, holdout_unseen": E.ExpectColumnDistinctValuesToEqualSet(column="split", value_set=["train", "holdout", "holdout_unseen"]),
    }
    for expectation in row_checks.values():
        row_suite.add_expectation(expectation)
    cover_suite = gx.ExpectationSuite(name="corpus_coverage")
    cover_suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="covered", value_set=[True]))

    row_result = rows_batch.get_batch(batch_parameters={"dataframe": frame.to_pandas()}).validate(row_suite)
    cover_result = cover_batch.get_batch(batch_parameters={"dataframe": coverage}).validate(cover_suite)
    results = []
    for name, r in zip(row_checks, row_result.results):
        observed = r.result.get("unexpected_count", r.result.get("observed_value"))
        results.append({"expectation": name, "success": bool(r.success), "observed": f"{observed} unexpected" if "unexpected_count" in r.result else str(observed)})
    cover = cover_result.results[0]
    results.append(
        {
            "expectation": "every node and edge present in training",
            "success": bool(cover.success),
            "observed": "all covered" if cover.success else f"missing nodes {missing_nodes}, edges {missing_edges}",
        }
    )
    return CorpusValidation(all(r["success"] for r in results), results)
