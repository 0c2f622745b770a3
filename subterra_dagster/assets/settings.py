"""Each stage's Dagster config, derived from the core's settings dataclasses.

A setting and its default live once, in the core (``CorpusConfig``, ``TrainConfig``, ``EvalConfig``,
``Gate``, ``MixConfig``, ``RepairConfig``, ``Prices``); the config a user edits in the launchpad is
made from those fields here, so Dagster, the CLI, the profiles (named overrides) and the bench
scripts start from the same values. Only what is about orchestration is declared here (which
recompile a run does, which files a stage writes).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import dagster as dg
import pydantic

from subterra.corpus import CorpusConfig
from subterra.cost import Prices
from subterra.evaluation import EvalConfig
from subterra.incremental import MixConfig
from subterra.repair import RepairConfig
from subterra.serving import Gate
from subterra.training import TrainConfig

RECOMPILE = Literal["incremental", "full"]
# set by the asset from its inputs, never by a user
TRAINING_FILES = ("workflow", "train_data", "output_dir", "checkpoint_dir", "data_dir", "lexicon_data", "workflow_atoms", "init_from")


def _field(annotation, default):
    if typing.get_origin(annotation) is tuple:  # Dagster's config has lists, not tuples
        annotation = list[typing.get_args(annotation)[0]]
        default = list(default)
    return annotation, default


def config_fields(*sources: type, exclude: tuple[str, ...] = ()) -> dict:
    """pydantic field definitions of every field of the ``sources`` dataclasses, with their defaults."""
    out: dict = {}
    for source in sources:
        hints = typing.get_type_hints(source)
        for f in dataclasses.fields(source):
            if f.name in exclude or f.name in out:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[f.name] = _field(hints[f.name], default)
    return out


def core(settings: dg.Config, cls: type, **fields):
    """The core dataclass ``cls`` from a Dagster config's fields of the same names (lists back to tuples)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in settings.model_dump().items() if k in names}
    for name, value in values.items():
        if isinstance(value, list) and typing.get_origin(hints[name]) is tuple:
            values[name] = tuple(value)
    return cls(**{**values, **fields})


def derived(name: str, doc: str, *sources: type, base: type = dg.Config, exclude: tuple[str, ...] = (), **extra) -> type:
    return pydantic.create_model(name, __base__=base, __doc__=doc, __module__=__name__,
                                 **config_fields(*sources, exclude=exclude), **extra)


class _Corpus(dg.Config):
    def corpus_config(self) -> CorpusConfig:
        return core(self, CorpusConfig)


class _Training(dg.Config):
    def train_config(self, **fields) -> TrainConfig:
        return core(self, TrainConfig, **fields)


class _TrainedWeights(_Training):
    def mix(self) -> MixConfig:
        return core(self, MixConfig)


class _Eval(dg.Config):
    def eval_config(self) -> EvalConfig:
        return core(self, EvalConfig)

    def gate(self) -> Gate:
        return core(self, Gate)


class _Repair(dg.Config):
    def repair_config(self) -> RepairConfig:
        return core(self, RepairConfig)


class _Prices(dg.Config):
    def prices(self) -> Prices:
        return core(self, Prices)


CorpusSettings = derived(
    "CorpusSettings",
    "The synthetic corpus (``subterra.corpus.CorpusConfig``): sizes, off-script rates, phrasings. "
    "``recompile: incremental`` keeps the conversations of unchanged paths from the previous corpus.",
    CorpusConfig, base=_Corpus, recompile=(RECOMPILE, "incremental"),
)
TrainingSettings = derived(
    "TrainingSettings",
    "The student and its training (``subterra.training.TrainConfig``).",
    TrainConfig, base=_Training, exclude=TRAINING_FILES,
)
TrainedWeightsSettings = derived(
    "TrainedWeightsSettings",
    "Training settings, plus how a recompile trains: ``incremental`` continues from the last good weights on "
    "a mix weighted toward the new or changed paths (``subterra.incremental.MixConfig``); ``full`` (or no "
    "usable previous model) trains from scratch.",
    TrainConfig, MixConfig, base=_TrainedWeights, exclude=TRAINING_FILES, recompile=(RECOMPILE, "incremental"),
)
EvalSettings = derived(
    "EvalSettings",
    "The evaluation (``subterra.evaluation.EvalConfig``) and the gate a model must pass to serve "
    "(``subterra.serving.Gate``).",
    EvalConfig, Gate, base=_Eval,
)
RepairSettings = derived(
    "RepairSettings",
    "Repair rounds after the compile (``subterra.repair.RepairConfig``).",
    RepairConfig, base=_Repair,
)
PriceSettings = derived(
    "PriceSettings",
    "Prices per million tokens and per compute hour (``subterra.cost.Prices``).",
    Prices, base=_Prices,
)
