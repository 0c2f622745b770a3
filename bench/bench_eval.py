"""Evaluation throughput: batched, KV-cached lockstep evaluation against one scenario at a time.

The model is travel_booking's compiled model from ``data/`` if a compile left one (or the folder
in ``SUBTERRA_BENCH_MODEL``); otherwise a quick one is trained here first (a few hundred steps:
its conversations derail more, so they run longer, which the figures per token account for).
Batched: the eval's ``Lockstep`` driver, every scenario of a batch one row of one forward per
step, say lines drafted from the known ones (speculative decoding, ``subterra.drafts``).
Baselines: the same batches decoding every say token in a forward of its own (``draft_tokens=0``:
the same conversations, checked), and, on a sample of the scenarios, the same runtime with a batch
of one, and ``ChatSession`` (the chat runtime: one conversation, each forced stretch in one forward).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import polars as pl

from bench.common import ROOT, WORKFLOWS, header, ratio_line, set_threads
from subterra.corpus import CorpusConfig, build_corpus
from subterra.evaluation import EvalConfig, evaluate
from subterra.paths import select_paths
from subterra.routes import DEPLOYED, local_routes
from subterra.scenario import Scenario
from subterra.simulator import ScriptedUser
from subterra.teacher import TemplateTeacher
from subterra.workflow import load_workflow

SCENARIOS = 100  # per holdout, batched (a compile's eval plays 200 per holdout)
SAMPLE_EVERY = 20  # the one-at-a-time baselines run every 20th of them


def compiled_model(wf, corpus, folder: Path) -> tuple[str, str]:
    chosen = os.environ.get("SUBTERRA_BENCH_MODEL")
    if chosen:
        return chosen, "SUBTERRA_BENCH_MODEL"
    models = sorted((ROOT / "data" / "models" / wf.id).glob("*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if models:
        return str(models[-1].parent), "the last compile in data/"
    from subterra.tokenizer import workflow_atoms
    from subterra.training import TrainConfig, train

    corpus.write_parquet(folder / "train.parquet")
    result = train(TrainConfig(workflow=wf.id, train_data=str(folder / "train.parquet"), output_dir=str(folder / "model"),
                               workflow_atoms=workflow_atoms(wf), batch_size=8, max_steps=300, learning_rate=2e-3,
                               max_length=4096, logging_steps=100, save_steps=10_000))
    return result.model_dir, f"trained here for {result.steps} steps (no compiled model in data/)"


def one_at_a_time_chat(model_dir: str, wf, rows: list[dict], max_say: int) -> tuple[float, int]:
    """Every scenario alone through ChatSession; (seconds, assistant turns)."""
    from subterra.runtime.chat import ChatSession

    seconds, turns = 0.0, 0
    for row in rows:
        scenario = Scenario.from_json(row["scenario"])
        reference = json.loads(row["messages"])
        limit = sum(1 for m in reference if m["role"] == "assistant") + EvalConfig().extra_turns
        session = ChatSession(model_dir, wf, max_say_tokens=max_say)
        user = ScriptedUser(wf, scenario)
        turn = user.opener()
        started = time.perf_counter()
        for _ in range(limit):
            form = session.respond(turn.text)
            turns += 1
            turn = user.reply(form.node)
            if turn is None:
                break
        seconds += time.perf_counter() - started
    return seconds, turns


def main() -> None:
    set_threads()
    header("evaluation: batched KV-cached lockstep vs one scenario at a time")
    wf = load_workflow(WORKFLOWS / "travel_booking.yaml")
    corpus = build_corpus(wf, select_paths(wf).paths, TemplateTeacher(),
                          CorpusConfig(holdout_scenarios=200))
    with tempfile.TemporaryDirectory() as folder:
        model_dir, source = compiled_model(wf, corpus, Path(folder))
        print(f"model: {model_dir} ({source})")
        config = EvalConfig(scenarios=SCENARIOS, max_say_tokens=64, routes=(DEPLOYED,))  # the compile's rows per batch
        started = time.perf_counter()
        deployed = local_routes([DEPLOYED], None, model_dir)  # the compiled model on the prefilled form
        batched = evaluate(deployed, wf, corpus, config)
        batched_seconds = time.perf_counter() - started
        frame = batched.scenarios
        n, turns = frame.height, int(frame["turns"].sum())
        print(f"batched (batch {config.batch_size}): {n} scenarios, {turns} turns in {batched_seconds:.1f} s = "
              f"{n / batched_seconds:.2f} scenarios/s, {turns / batched_seconds:.2f} turns/s; strict pass {frame['strict_pass'].mean():.3f}")
        sample_ids = sorted(frame.sort("scenario_id")["scenario_id"].to_list()[::SAMPLE_EVERY])
        sample = corpus.filter(pl.col("conversation_id").is_in(sample_ids))
        started = time.perf_counter()
        single = evaluate(deployed, wf, sample, EvalConfig(scenarios=SCENARIOS, batch_size=1, max_say_tokens=64))
        single_seconds = time.perf_counter() - started
        m, single_turns = single.scenarios.height, int(single.scenarios["turns"].sum())
        print(f"one at a time (same runtime, batch 1): {m} scenarios, {single_turns} turns in {single_seconds:.1f} s = "
              f"{m / single_seconds:.2f} scenarios/s, {single_turns / single_seconds:.2f} turns/s")
        chat_seconds, chat_turns = one_at_a_time_chat(model_dir, wf, list(sample.iter_rows(named=True)), 64)
        print(f"one at a time (ChatSession, each forced stretch in one forward): {m} scenarios, {chat_turns} turns in "
              f"{chat_seconds:.1f} s = {m / chat_seconds:.2f} scenarios/s, {chat_turns / chat_seconds:.2f} turns/s")
        started = time.perf_counter()
        plain = evaluate(deployed, wf, corpus, replace(config, draft_tokens=0))
        plain_seconds = time.perf_counter() - started
        same = [c for c in frame.columns if "latenc" not in c]
        print(f"batched, no drafts (every say token a forward): {plain_seconds:.1f} s, the same conversations: "
              f"{plain.scenarios.select(same).equals(frame.select(same))}")
        ratio_line("throughput", "batched", turns / batched_seconds, "batched without drafts", turns / plain_seconds, "turns/s")
        ratio_line("throughput", "batched", turns / batched_seconds, "one at a time (batch 1)", single_turns / single_seconds, "turns/s")
        ratio_line("throughput", "batched", turns / batched_seconds, "one at a time (ChatSession)", chat_turns / chat_seconds, "turns/s")


if __name__ == "__main__":
    main()
