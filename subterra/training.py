"""Full-parameter SFT of the student on the train split, with TRL's ``SFTTrainer``.

Configuration is a dataclass (``TrainConfig``) written to JSON; ``subterra.cli.train`` runs it
as its own process (launched by the ``trained_weights`` asset through Dagster Pipes, or by hand,
or by ``accelerate launch`` on a GPU machine). Loss is on assistant turns only; the system
prompt is only the workflow's one-line ``assistant`` text (that is what the corpus holds).
Checkpoints are written every ``save_steps`` steps (TRL/transformers' own) beside the model
folder; a rerun of the same training (same settings, same data: ``fingerprint.json`` in the
checkpoint folder says which) resumes from the last complete one, and a checkpoint of another
training is discarded, never resumed. The finished model is a standard transformers folder
(safetensors, tokenizer, chat template), built under a staging name and swapped into place whole
(``subterra.atomic.replace_dir``), with ``training_result.json`` beside the weights and the
optimizer's state (``optimizer.pt``: Adam's moments) that a continued run resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import polars as pl

from subterra.atomic import recover_dir, replace_dir, write_text
from subterra.lexicon import build_lexicon, save_lexicon
from subterra.student import StudentSpec, continue_student, load_student

if TYPE_CHECKING:
    from subterra.workflow import Workflow

RESULT_FILE = "training_result.json"
OPTIMIZER_FILE = "optimizer.pt"  # the optimizer's state at the end of the training, beside its weights


@dataclass
class TrainConfig:
    workflow: str = ""
    train_data: str = ""  # Parquet with the corpus columns (rows of split "train" are used)
    output_dir: str = ""  # the final model folder
    checkpoint_dir: str = ""  # defaults to output_dir + ".checkpoints"
    base_model: str = StudentSpec.base_model  # "tiny-llama" | a named base model ("smollm2-135m") | a folder | a hub id
    data_dir: str = ""  # where named base models are cached ("": SUBTERRA_DATA_DIR or ./data)
    lexicon_data: str = ""  # Parquet whose train rows the lexicon is learned from ("": train_data)
    workflow_atoms: list[str] = field(default_factory=list)  # node ids and slot names (single tokens)
    # the student's size (the tiny student built from config; a pretrained base model has its own)
    vocab_size: int = StudentSpec.vocab_size
    hidden_size: int = StudentSpec.hidden_size
    intermediate_size: int = StudentSpec.intermediate_size
    num_layers: int = StudentSpec.num_layers
    num_heads: int = StudentSpec.num_heads
    epochs: float = 3.0
    max_steps: int = -1
    max_tokens: int = 1_800_000  # a compute budget: caps the steps at this many training tokens (0: no cap)
    batch_size: int = 2
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1.5e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    max_length: int = StudentSpec.max_length
    seed: int = 0
    logging_steps: int = 20
    save_steps: int = 200
    bf16: bool | None = None  # None: bf16 autocast on CUDA and on a CPU that multiplies bf16 faster than fp32, else fp32
    # recompute activations during backward: less memory for ~a third more compute. TRL turns it on by
    # default; these students fit in memory without it (an 8B model on a GPU may want it on)
    activation_checkpointing: bool = False
    torch_threads: int = 0  # 0: all cores
    # the loss over the full logits (transformers') instead of TRL's tiled LM head, which computes
    # log-probs, entropy and accuracy tile by tile without holding the logits: None = full logits
    # on a CPU (the same loss; per step 12-18% less time for the tiny student, half the time for
    # SmolLM2-135M's 49k vocabulary, and RAM holds the logits), the tiled head on a GPU (memory)
    full_logits_loss: bool | None = None
    init_from: str = ""  # a compiled model folder to continue training (its tokenizer and weights)
    # keep the optimizer's state in the model folder (``optimizer.pt``, twice the weights' size) and,
    # continuing a folder that has one, start from it: each weight then moves by its own gradient
    # history, where a fresh Adam's first steps move every weight by about the learning rate
    # whatever its gradient, which undoes some of what the model had learnt (``bench.bench_continue``
    # measures both; ``docs/experiments.md``)
    optimizer_state: bool = True

    def to_json(self, path: str | os.PathLike) -> None:
        write_text(path, json.dumps(asdict(self), indent=2))

    def fingerprint(self) -> str:
        """What makes two trainings the same one: every setting but where files go, and the data."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("train_data", "output_dir", "checkpoint_dir", "torch_threads")}
        data = hashlib.sha256(Path(self.train_data).read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps([settings, data], sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainConfig":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown training settings {sorted(unknown)}")
        return cls(**data)

    def student(self) -> StudentSpec:
        return StudentSpec(
            base_model=self.base_model,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            max_length=self.max_length,
            atoms=tuple(self.workflow_atoms),
            data_dir=self.data_dir,
        )


def train_conversations(frame: pl.DataFrame, weighted: bool = True) -> list[list[dict]]:
    """The train split's conversations; with a ``weight`` column (a continued run's mix,
    ``subterra.incremental.training_mix``) each one as many times as its weight says."""
    rows = frame.filter(pl.col("split") == "train").sort("conversation_id")
    if weighted and "weight" in rows.columns:
        rows = rows.select(pl.col("messages").repeat_by(pl.col("weight")).explode()).drop_nulls()
    return [json.loads(m) for m in rows["messages"]]


def measure_lengths(corpus: pl.DataFrame, wf: Workflow, config: TrainConfig | None = None) -> list[int]:
    """Token length of every conversation of ``corpus`` under the student's tokenizer."""
    config = config or TrainConfig()
    spec = config.student()
    if not spec.atoms:
        from subterra.tokenizer import workflow_atoms

        spec = StudentSpec(**{**asdict(spec), "atoms": tuple(workflow_atoms(wf))})
    tokenizer = spec.tokenizer(train_conversations(corpus))
    texts = [tokenizer.apply_chat_template(json.loads(m), tokenize=False) for m in corpus["messages"]]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@dataclass
class TrainResult:
    workflow: str
    model_dir: str
    base_model: str
    params: int
    steps: int
    epochs: float
    train_conversations: int
    train_tokens: int
    train_seconds: float
    tokens_per_second: float
    final_loss: float
    loss_curve: list[tuple[int, float]]
    device: str
    dtype: str
    resumed_from: str | None = None
    continued_from: str | None = None  # the compiled model this run started from (incremental)
    optimizer_resumed: int = 0  # of the parameters, how many started from the continued folder's optimizer state

    def to_json(self, path) -> None:
        write_text(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path) -> "TrainResult":
        data = json.loads(Path(path).read_text())
        data["loss_curve"] = [tuple(p) for p in data["loss_curve"]]
        return cls(**data)


FINGERPRINT_FILE = "fingerprint.json"


def _complete(checkpoint: Path) -> bool:
    """A checkpoint is complete once its trainer state (written last) reads back whole."""
    try:
        return isinstance(json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step"), int)
    except (OSError, ValueError, AttributeError):
        return False


def _checkpoint_to_resume(folder: Path, fingerprint: str) -> str | None:
    """The last complete checkpoint of this very training; checkpoints of another one are removed."""
    try:
        same = json.loads((folder / FINGERPRINT_FILE).read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        write_text(folder / FINGERPRINT_FILE, json.dumps({"fingerprint": fingerprint}))
        return None
    steps = {p: p.name.removeprefix("checkpoint-") for p in folder.glob("checkpoint-*")}
    done = [p for p, step in steps.items() if step.isdigit() and _complete(p)]
    return str(max(done, key=lambda p: int(steps[p]))) if done else None


def causal_only(inputs: dict) -> dict:
    """The batch without its padding mask, when dropping it changes no real token's output: rows
    padded on the right (TRL's collator) under causal attention never let a real token see a pad,
    so the mask only slows attention down (PyTorch's CPU attention with a mask: 1.65x the time of
    its causal kernel, forward and backward, ``bench/bench_training.py``). Positions are counted
    from 0 on every row, as they are without padding. A batch padded otherwise is returned as it is."""
    import torch

    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return inputs
    if bool((mask[:, 1:] > mask[:, :-1]).any()):  # a pad before a real token: not right padding
        return inputs
    rows, width = mask.shape
    positions = torch.arange(width, device=mask.device).expand(rows, width)
    given = inputs.get("position_ids")
    if given is not None and not bool((given == positions)[mask.bool()].all()):
        return inputs
    # position ids instead of the mask: TRL counts tokens from one or the other; counted from 0
    # with no restart, transformers sees one causal sequence per row
    return {**{k: v for k, v in inputs.items() if k != "attention_mask"}, "position_ids": positions}


def _student_trainer():
    """TRL's ``SFTTrainer`` with the padding mask dropped where it changes nothing
    (``causal_only``) and, when asked, transformers' full-logits loss instead of TRL's tiled head."""
    from transformers import Trainer
    from trl import SFTTrainer

    class StudentTrainer(SFTTrainer):
        def __init__(self, *args, full_logits_loss: bool = False, optimizer_state: str | None = None, **kwargs):
            self.optimizer_state, self.optimizer_resumed = optimizer_state, 0
            super().__init__(*args, **kwargs)
            self.full_logits_loss = full_logits_loss

        def create_optimizer(self, model=None):
            fresh = self.optimizer is None
            optimizer = super().create_optimizer(model)
            if fresh and self.optimizer_state:  # a checkpoint resumed later loads its own state over this one
                self.optimizer_resumed = resume_optimizer_state(optimizer, self.optimizer_state)
            return optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = causal_only(inputs)
            if self.full_logits_loss:
                return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    return StudentTrainer


def resume_optimizer_state(optimizer, path: str | os.PathLike) -> int:
    """Start ``optimizer`` from the per-parameter state (Adam's moments and step) saved at ``path``
    by the training it continues; its own settings (learning rate, schedule) stay. Parameters are
    matched by position (the same student architecture orders them the same); one that grew along
    its first dimension (an embedding given new token rows) keeps the saved rows' state, the new rows
    start at zero; one of another shape starts fresh. Returns how many parameters were resumed."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)["state"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, values in saved.items():
        if index >= len(params):
            continue
        shape, resumed = params[index].shape, {}
        for name, value in values.items():
            if value.dim() == 0 or value.shape == shape:
                resumed[name] = value
            elif value.dim() == len(shape) and value.shape[1:] == shape[1:] and value.shape[0] < shape[0]:
                resumed[name] = torch.cat([value, value.new_zeros((shape[0] - value.shape[0], *shape[1:]))])
            else:
                break
        else:
            state[index] = resumed
    whole = optimizer.state_dict()
    whole["state"] = state
    optimizer.load_state_dict(whole)
    return len(state)


def cpu_bf16_faster(size: int = 512, repeats: int = 8) -> bool:
    """Does this CPU multiply faster in bf16 than in fp32, measured now? A CPU with AMX trains in
    bf16 autocast faster with the same loss curve (weights stay fp32); one with only AVX512-BF16
    may multiply bf16 at half its fp32 speed, so the flags alone do not tell (``make bench``)."""
    import time

    import torch

    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False

    def best(dtype) -> float:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
        return min(times)

    return best(torch.bfloat16) < best(torch.float32)


def train(config: TrainConfig, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train, save the model folder atomically, return (and write) the result."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig

    if config.torch_threads or not torch.cuda.is_available():
        torch.set_num_threads(config.torch_threads or os.cpu_count() or 1)
    frame = pl.read_parquet(config.train_data)
    conversations = train_conversations(frame)
    if not conversations:
        raise ValueError(f"{config.train_data}: no training conversations")
    spec = config.student()
    if config.init_from:
        tokenizer, model = continue_student(config.init_from, spec.atoms)
    else:
        tokenizer, model = load_student(spec, conversations)
    cuda = torch.cuda.is_available()
    bf16 = (cuda or cpu_bf16_faster()) if config.bf16 is None else config.bf16
    out = recover_dir(config.output_dir)
    ckpt_dir = Path(config.checkpoint_dir or f"{out}.checkpoints")
    resume = _checkpoint_to_resume(ckpt_dir, config.fingerprint())

    args = SFTConfig(
        output_dir=str(ckpt_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_length=config.max_length,
        assistant_only_loss=True,
        packing=False,
        train_sampling_strategy="random",  # batches mix paths, so decision points are contrasted
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        report_to=[],
        seed=config.seed,
        bf16=bf16,
        activation_checkpointing=config.activation_checkpointing,  # TRL defaults it on
        use_cpu=not cuda,
        dataloader_num_workers=0,
        disable_tqdm=True,
        dataset_num_proc=None,
    )
    if config.max_tokens > 0:
        texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in conversations]
        mean_len = sum(len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]) / len(texts)
        per_step = mean_len * config.batch_size * config.gradient_accumulation_steps
        budget_steps = max(1, int(config.max_tokens / per_step))
        epoch_steps = math.ceil(len(conversations) / (config.batch_size * config.gradient_accumulation_steps))
        planned = int(config.epochs * epoch_steps) if config.max_steps <= 0 else config.max_steps
        if budget_steps < planned:
            args.max_steps = budget_steps
    curve: list[tuple[int, float]] = []
    started = time.perf_counter()

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                curve.append((state.global_step, float(logs["loss"])))
                if on_log is not None:
                    on_log(
                        {
                            "step": state.global_step,
                            "max_steps": state.max_steps,
                            "loss": float(logs["loss"]),
                            "elapsed_s": round(time.perf_counter() - started, 1),
                        }
                    )

    full_logits = not cuda if config.full_logits_loss is None else config.full_logits_loss
    resume_state = Path(config.init_from) / OPTIMIZER_FILE if config.init_from and config.optimizer_state else None
    trainer = _student_trainer()(
        full_logits_loss=full_logits,
        optimizer_state=str(resume_state) if resume_state and resume_state.exists() else None,
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{"messages": m} for m in conversations]),
        processing_class=tokenizer,
        callbacks=[Progress()],
    )
    if on_log is not None:  # progress goes to on_log; transformers' own printing would repeat it on stdout
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    train_tokens_per_epoch = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    steps = trainer.state.global_step
    epochs_done = float(trainer.state.epoch or config.epochs)
    tokens = int(train_tokens_per_epoch * epochs_done)

    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))
    tokenizer.save_pretrained(str(staging))
    if config.optimizer_state:
        torch.save(trainer.optimizer.state_dict(), staging / OPTIMIZER_FILE)
    result = TrainResult(
        workflow=config.workflow,
        model_dir=str(out),
        base_model=config.base_model,
        params=sum(p.numel() for p in model.parameters()),
        steps=steps,
        epochs=epochs_done,
        train_conversations=len(conversations),
        train_tokens=tokens,
        train_seconds=round(seconds, 2),
        tokens_per_second=round(tokens / seconds, 1) if seconds > 0 else math.nan,
        final_loss=float(curve[-1][1]) if curve else float(output.training_loss),
        loss_curve=curve,
        device="cuda" if cuda else "cpu",
        dtype="bf16" if bf16 else "fp32",
        resumed_from=resume,
        continued_from=config.init_from or None,
        optimizer_resumed=trainer.optimizer_resumed,
    )
    # the lexicon comes from the unweighted train rows (of ``lexicon_data`` when given: a repair
    # round learns it from the compile's conversations and its repair conversations together)
    lexicon_frame = pl.read_parquet(config.lexicon_data) if config.lexicon_data else frame
    save_lexicon(staging, build_lexicon(train_conversations(lexicon_frame, weighted=False)), whole_runs=spec.from_config)
    result.to_json(staging / RESULT_FILE)
    config.to_json(staging / "train_config.json")
    replace_dir(staging, out)  # the last good model stays whole until this one is
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return result
