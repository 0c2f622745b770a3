"""End to end: a full travel_booking compile, then an incremental recompile after a one-node text
edit, then a full recompile of the same edited workflow (the baseline the incremental one must
match on the holdouts). Long (tens of minutes on a 2-core CPU): ``make bench-e2e``.

Each compile is the real pipeline (every asset, in-process Dagster, training through Pipes) into
a temporary data folder (``--data-dir`` to keep it). Prints the wall time of each compile and of
each stage, the incremental/full ratio, both compiles' holdout scores side by side, and whether
the edit was learnt (in how many held-out conversations the model finds the new say line more
likely than the old one). Whether the incremental recompile held (``eval_scores``' gate: within
``incremental_max_drop`` of the model it continues) and, where it did not, the time until the
edit is served with the fall-back: the incremental recompile plus a full one (the third compile
is that full recompile).

``--seeds N`` repeats the three compiles with N training seeds (each seed its own data folder):
one compile of the tiny student moves by several points of strict pass between seeds, so "as
good as a full recompile" is the mean of the paired differences, printed with their spread.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import WORKFLOWS, header, ratio_line, set_threads

WORKFLOW = "travel_booking"
EDIT = ("Last step, {passenger_name}: card payment or miles?", "Final step, {passenger_name}: card payment or miles?")
EDITED_NODE = "payment"


def compile_once(data_dir: Path, instance, mode: str, seed: int = 0) -> tuple[float, dict[str, float]]:
    import dagster as dg

    from subterra_dagster.assets import COMPILE_ASSETS
    from subterra_dagster.definitions import build_definitions

    resources = dict(build_definitions(str(data_dir)).resources)
    run_config = {"ops": {"synthetic_corpus": {"config": {"recompile": mode}},
                          "trained_weights": {"config": {"recompile": mode, "seed": seed}}}}
    started = time.perf_counter()
    result = dg.materialize(COMPILE_ASSETS, partition_key=WORKFLOW, resources=resources, instance=instance,
                            run_config=run_config, raise_on_error=True)
    seconds = time.perf_counter() - started
    stages: dict[str, float] = {}
    began: dict[str, float] = {}
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type_value == "STEP_START":
            began[event.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            stages[event.step_key] = entry.timestamp - began[event.step_key]
    return seconds, stages


def scores(data_dir: Path):
    """(eval scores per holdout of the deployed route, the training row) of the last compile."""
    import polars as pl

    from subterra.routes import DEPLOYED
    from subterra.store import Store

    store = Store(data_dir / "subterra.duckdb")
    table = (store.read("eval_scores", WORKFLOW).filter(pl.col("route") == DEPLOYED)
             .select("set", "strict_pass", "partial_credit", "slot_accuracy").sort("set"))
    training = store.read("trained_weights", WORKFLOW).select("recompile", "steps", "train_seconds", "changed_conversations")
    verdict = store.read("eval_runs", WORKFLOW).select("holds", "verdict")
    return table, {**training.row(0, named=True), **verdict.row(0, named=True)}


def edit_preferred(data_dir: Path, limit: int = 40) -> tuple[int, int]:
    """``edit_preferred_by`` the compile's last model, on its folder's held-out conversations."""
    from subterra.store import Store

    store = Store(data_dir / "subterra.duckdb")
    model_dir = store.read("trained_weights", WORKFLOW).row(0, named=True)["model_dir"]
    return edit_preferred_by(model_dir, store.read("validated_dataset", WORKFLOW), limit)


def edit_preferred_by(model_dir: str, dataset, limit: int = 40) -> tuple[int, int]:
    """(held-out conversations of ``dataset`` (validated_dataset rows) at the edited say line, of
    which the model in ``model_dir`` gives the new line a higher likelihood than the old one).
    Greedy decoding mostly speaks one favourite say of a node, so the eval alone may never show
    the edited line; the likelihood of each version of the same conversation (identical up to
    that line) says which one the model has learnt."""
    import json

    import polars as pl
    import torch

    from subterra.student import load_compiled

    tokenizer, model = load_compiled(model_dir)
    old, new = EDIT
    rows = (dataset.filter(pl.col("split") != "train")
            .filter(pl.col("messages").str.contains(old, literal=True) | pl.col("messages").str.contains(new, literal=True))
            .sort("conversation_id").head(limit))

    def likelihood(messages: list[dict]) -> float:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=model.device)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, :-1].float()
        return float(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).sum())

    preferred = 0
    for (text,) in rows.select("messages").iter_rows():
        messages = json.loads(text)
        at = next(i for i, m in enumerate(messages) if m["role"] == "assistant" and (old in m["content"] or new in m["content"]))
        head = messages[:at]
        content = messages[at]["content"].replace(new, old)
        preferred += likelihood(head + [{"role": "assistant", "content": content.replace(old, new)}]) > likelihood(
            head + [{"role": "assistant", "content": content}])
    return rows.height, preferred


def one_seed(base: Path, seed: int) -> dict:
    """The three compiles with training seed ``seed`` in their own data folder."""
    import dagster as dg

    from subterra_dagster.assets import workflows_partitions
    from subterra.paths import path_nodes, select_paths
    from subterra.workflow import load_workflow

    data_dir = base / f"seed-{seed}"
    (data_dir / "workflows").mkdir(parents=True, exist_ok=True)
    source = data_dir / "workflows" / f"{WORKFLOW}.yaml"
    shutil.copyfile(WORKFLOWS / f"{WORKFLOW}.yaml", source)
    print(f"\nseed {seed}: data folder {data_dir}", flush=True)
    report, result = {}, {}
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(workflows_partitions.name, [WORKFLOW])
        report["full"] = compile_once(data_dir, instance, "full", seed)
        result["full"] = scores(data_dir)
        learnt = {"full": edit_preferred(data_dir)}
        text = source.read_text()
        assert text.count(EDIT[0]) == 1, "the edited line is not in the workflow file"
        source.write_text(text.replace(*EDIT))
        wf = load_workflow(source)
        paths = select_paths(wf).paths
        through = sum(EDITED_NODE in path_nodes(wf, p) for p in paths)
        print(f"edit: one say line of '{EDITED_NODE}' ({through}/{len(paths)} paths go through it)")
        report["incremental"] = compile_once(data_dir, instance, "incremental", seed)
        result["incremental"] = scores(data_dir)
        learnt["incremental"] = edit_preferred(data_dir)
        report["full (edited)"] = compile_once(data_dir, instance, "full", seed)
        result["full (edited)"] = scores(data_dir)
        learnt["full (edited)"] = edit_preferred(data_dir)
    for name, (seconds, stages) in report.items():
        print(f"{name}: {seconds:.0f} s  (" + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + ")")
    for name, (table, training) in result.items():
        print(f"\n{name}: training {training}")
        print(table)
    for name, (conversations, preferred) in learnt.items():
        print(f"{name}: the edited say of '{EDITED_NODE}' in {conversations} held-out conversations: "
              f"the new line more likely than the old one in {preferred}")
    return {"seconds": {k: v[0] for k, v in report.items()},
            "strict": {k: dict(v[0].select("set", "strict_pass").iter_rows()) for k, v in result.items()},
            "learnt": learnt, "held": result["incremental"][1]["holds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="keep the compiles here (default: a temporary folder)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1, three compiles each")
    parser.add_argument("--first-seed", type=int, default=0, help="start at this seed (K..K+N-1): resume a run's other seeds")
    args = parser.parse_args()
    import statistics

    header("end to end: full compile, incremental recompile after a one-node edit, full recompile")
    # the wall-time targets are absolute; this machine's speed, before and after, says what they meant here
    import torch

    from bench.bench_training import matmul_flops

    set_threads()
    before = matmul_flops(torch.float32) / 1e9
    print(f"fp32 matmul (2048x2048) before: {before:.0f} GFLOP/s", flush=True)
    base = Path(args.data_dir or tempfile.mkdtemp(prefix="subterra-e2e-")).resolve()
    runs = [one_seed(base, seed) for seed in range(args.first_seed, args.first_seed + args.seeds)]
    print(f"\nfp32 matmul before and after: {before:.0f} and {matmul_flops(torch.float32) / 1e9:.0f} GFLOP/s")

    def spread(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.3f}" + (f" (sd {statistics.stdev(values):.3f}, n={len(values)})" if len(values) > 1 else "")

    print(f"\n== over {len(runs)} seed(s) ==")
    full = [r["seconds"]["full"] for r in runs]
    print(f"full compile of {WORKFLOW}: {statistics.fmean(full) / 60:.1f} minutes, max {max(full) / 60:.1f} (target: at most 10)")
    incremental = statistics.fmean(r["seconds"]["incremental"] for r in runs)
    full_edited = statistics.fmean(r["seconds"]["full (edited)"] for r in runs)
    ratio_line("recompile after the edit", "incremental", incremental, "full", full_edited, "s", higher_is_better=False)
    ratios = [r["seconds"]["incremental"] / r["seconds"]["full (edited)"] for r in runs]
    for name in runs[0]["learnt"]:
        n = sum(r["learnt"][name][0] for r in runs)
        print(f"edit learnt, {name}: the new line preferred in {sum(r['learnt'][name][1] for r in runs)}/{n} conversations")
    print(f"incremental / full wall time: {statistics.fmean(ratios):.0%} per seed {[f'{x:.0%}' for x in ratios]} (target: at most 25%)")
    # an incremental recompile that does not hold (eval_scores' incremental_max_drop) is followed by a
    # full one of the same definition (the incremental_fallback sensor): the third compile here
    landed = [r["seconds"]["incremental"] + (0 if r["held"] else r["seconds"]["full (edited)"]) for r in runs]
    print(f"incremental recompile held (within incremental_max_drop of its base) on {sum(r['held'] for r in runs)}/{len(runs)} "
          f"seed(s); until the edit is served, with the fall-back to a full recompile where it did not: "
          f"{statistics.fmean(landed):.0f} s per seed {[f'{x:.0f}' for x in landed]} ({statistics.fmean(landed) / full_edited:.0%} of a full recompile)")
    for holdout in runs[0]["strict"]["full"]:
        inc = [r["strict"]["incremental"][holdout] for r in runs]
        ful = [r["strict"]["full (edited)"][holdout] for r in runs]
        first = [r["strict"]["full"][holdout] for r in runs]
        diff = [(a - b) * 100 for a, b in zip(inc, ful)]
        print(f"{holdout}: strict pass incremental {spread(inc)} vs full {spread(ful)} (first compile {spread(first)}); "
              f"paired difference {statistics.fmean(diff):+.1f} points per seed {[f'{d:+.1f}' for d in diff]} (target: within 2)")
        # the two sources of that difference: what the continued run changed in the model it started
        # from, and how far two full compiles of nearly the same corpus land apart
        own = [(a - b) * 100 for a, b in zip(inc, first)]
        noise = [(a - b) * 100 for a, b in zip(ful, first)]
        print(f"  incremental - first compile (the continued run's own change) {statistics.fmean(own):+.1f} points per seed "
              f"{[f'{d:+.1f}' for d in own]}; full edited - first compile (two full compiles) {statistics.fmean(noise):+.1f} "
              f"per seed {[f'{d:+.1f}' for d in noise]}")


if __name__ == "__main__":
    main()
