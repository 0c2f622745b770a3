"""Profiles: the settings of every stage for a whole ladder run, at one scale.

* ``quick`` — the whole comparison for ``travel_booking`` on a 2-core CPU in about an hour, with
  SmolLM2-135M-Instruct: 4 training conversations per path in the ``wide`` phrasings, at most
  400, one epoch capped at 300k tokens (~760 tokens a conversation under SmolLM2's tokenizer);
  24 scenarios per holdout played by each of the four routes (the orchestrated routes carry the
  ~1,000-token procedure and run to the turn limit); one repair round of at most 32 repair
  conversations plus 16 replayed ones. Sized for SmolLM2 training at ~240 tokens/s with the
  full-logits loss; one repair round (the measured run times and scores: ``docs/experiments.md``).
* ``full`` — the published scale, for a GPU: every path, 8 conversations per path, 200 scenarios
  per holdout, three epochs, three repair rounds.

A profile is plain data: ``run_config()`` gives the Dagster run config of every stage it sets
(the CLI's ``subterra ladder`` uses it; the same dict works in the Launchpad).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from subterra.routes import ROUTES


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    corpus: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    repair: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)

    def run_config(self) -> dict:
        """Dagster run config: ``{"ops": {stage: {"config": {...}}}}`` for every stage it sets."""
        ops = {
            "workflow_paths": self.paths,
            "synthetic_corpus": self.corpus,
            "validated_dataset": self.training,
            "trained_weights": self.training,
            "eval_scores": self.eval,
            "promoted_model": self.repair,
        }
        return {"ops": {op: {"config": dict(values)} for op, values in ops.items() if values}}

    def sizes(self) -> dict:
        """The sizes that matter for reading its results."""
        return {
            "base_model": self.training.get("base_model"),
            "conversations_per_path": self.corpus.get("conversations_per_path"),
            "holdout_scenarios": self.corpus.get("holdout_scenarios"),
            "eval_scenarios_per_generated_set": self.eval.get("scenarios"),
            "eval_routes": ",".join(self.eval.get("routes", [])),
            "epochs": self.training.get("epochs"),
            "max_train_tokens": self.training.get("max_tokens"),
            "repair_rounds": self.repair.get("rounds"),
        }


SMOLLM2 = {"base_model": "smollm2-135m", "learning_rate": 3e-4, "warmup_ratio": 0.05, "max_length": 2048}
REPAIR = {"epochs": 1.0, "learning_rate": 1e-4}

QUICK = Profile(
    name="quick",
    description="travel_booking on a 2-core CPU in about an hour (SmolLM2-135M, smaller corpus and holdout)",
    corpus={"conversations_per_path": 4, "max_train_conversations": 400, "holdout_scenarios": 24, "phrasings": "wide"},
    training={**SMOLLM2, "epochs": 1.0, "max_tokens": 300_000, "batch_size": 4, "logging_steps": 5, "save_steps": 20},
    eval={"scenarios": 24, "batch_size": 24, "max_say_tokens": 64, "max_form_tokens": 112, "routes": list(ROUTES)},
    repair={**REPAIR, "rounds": 1, "per_failure": 2, "max_per_cluster": 8, "max_conversations": 32, "replay_ratio": 0.5},
)

FULL = Profile(
    name="full",
    description="the published scale for a GPU: every path, 200 scenarios per holdout, three repair rounds",
    corpus={"conversations_per_path": 8, "max_train_conversations": 6000, "holdout_scenarios": 200, "phrasings": "wide"},
    training={**SMOLLM2, "epochs": 3.0, "max_tokens": 0, "batch_size": 16, "logging_steps": 20, "save_steps": 200},
    eval={"scenarios": 200, "batch_size": 100, "max_cache_gb": 16.0, "routes": list(ROUTES)},
    repair={**REPAIR, "rounds": 3, "per_failure": 4, "max_per_cluster": 24, "max_conversations": 400, "replay_ratio": 1.0},
)

PROFILES = {p.name: p for p in (QUICK, FULL)}
