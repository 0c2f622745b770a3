"""Which loaded model answers each workflow, and how a recompile takes over.

Every workflow is served by its serving model (``subterra.serving.serving_model``: a repair
round's promoted weights, the compile's own model if it held, else the last good one), loaded on
first use with its whole runtime: the prefilled form and its constraints, the lexicon, the say
drafts, and a ``Batcher`` that shares forwards among concurrent requests.

A deployment looks again at which model serves a workflow at most every ``refresh_seconds``.
When a recompile names another model (another folder, or new weights in the same folder), the
new one is loaded beside the old and serves every new conversation; the old one stays loaded,
retired, while conversations it began are still in the conversation cache (and at most
``keep_seconds``), so those finish on the model they started with. A conversation whose model
was let go is replayed on the new one, and refused if the new one would not have said the same.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from subterra.batching import Batcher
from subterra.runtime.encoding import Codec, ReadingRules
from subterra.runtime.lockstep import MAX_DRAFT, Lockstep
from subterra.serving import Serving, serving_model
from subterra.workflow import Workflow

MAX_RUN = 4096  # a request's earlier turns go through the model in one forward, not in pieces


def model_version(model_dir: Path) -> str:
    """Names a model folder's weights: a recompile into the same folder is another version."""
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    return hashlib.sha256(f"{model_dir.resolve()}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()[:12]


@dataclass
class ServedModel:
    """A workflow's model, loaded with its runtime."""

    workflow: Workflow
    model_dir: Path
    version: str
    why: str
    codec: Codec
    batcher: Batcher
    loaded_at: float
    retired_at: float | None = None

    @classmethod
    def load(cls, wf: Workflow, model_dir: Path, why: str, max_batch: int, rules: ReadingRules) -> "ServedModel":
        from subterra.lexicon import load_lexicon, whole_runs
        from subterra.student import load_compiled

        version = model_version(model_dir)
        tokenizer, model = load_compiled(str(model_dir))
        codec = Codec(tokenizer, wf, load_lexicon(str(model_dir)), whole_runs(str(model_dir)), rules)
        driver = Lockstep(model, codec.banned_in_say, codec.masks, max_run=MAX_RUN, max_draft=MAX_DRAFT)
        prefix = driver.encode_prefix(codec.system(wf.assistant))
        room = getattr(model.config, "max_position_embeddings", 8192) or 8192
        batcher = Batcher(driver, prefix, max_batch, max_len=room, name=f"{wf.id}-{version}")
        return cls(wf, model_dir, version, why, codec, batcher, time.time())


class UnknownWorkflow(LookupError):
    pass


class Deployment:
    """The served models of every compiled workflow of a data folder."""

    def __init__(self, store, data_dir: Path, rules: ReadingRules = ReadingRules(), max_batch: int = 32,
                 refresh_seconds: float = 5.0, keep_seconds: float = 900.0,
                 in_use: Callable[[], set[str]] = set):
        self.store, self.data_dir = store, Path(data_dir)
        self.rules, self.max_batch = rules, max_batch
        self.refresh_seconds, self.keep_seconds = refresh_seconds, keep_seconds
        self.in_use = in_use  # the model versions conversations still hold (the conversation cache's)
        self._current: dict[str, ServedModel] = {}
        self._retired: dict[str, ServedModel] = {}
        self._checked: dict[str, float] = {}
        self._lock = threading.RLock()  # the loaded models (held only while they are read or changed)
        self._looking = threading.Lock()  # one look at the serving models at a time, and the load it leads to

    def workflows(self) -> list[str]:
        """The workflows that have a compiled model."""
        try:
            frame = self.store.query("select distinct workflow from trained_weights order by workflow")
        except Exception:  # no compile yet (no table), or the database is being rewritten: try again later
            return sorted(self._current)
        return list(frame["workflow"])

    def serving(self, workflow: str) -> Serving:
        try:
            return serving_model(self.store, workflow)
        except (LookupError, FileNotFoundError) as exc:
            raise UnknownWorkflow(f"no compiled model for workflow {workflow!r}") from exc

    def current(self, workflow: str) -> ServedModel:
        """The model new conversations of ``workflow`` get (loading or swapping it if due). A look
        at the store (and the load it leads to) holds up the new conversations, never the turns
        of those going on (``version``)."""
        with self._looking:
            served = self._current.get(workflow)
            due = time.monotonic() - self._checked.get(workflow, float("-inf")) >= self.refresh_seconds
            if served is not None and not due:
                return served
            try:
                serving = self.serving(workflow)
            except UnknownWorkflow:
                if served is None:
                    raise
                return served  # the database is being rewritten: keep serving what serves
            self._checked[workflow] = time.monotonic()
            model_dir = Path(serving.model_dir)
            if not model_dir.is_absolute():
                model_dir = self.data_dir / model_dir
            if served is not None and served.model_dir == model_dir and served.version == model_version(model_dir):
                return served
            fresh = ServedModel.load(Workflow.from_dict(serving.definition), model_dir, serving.why, self.max_batch, self.rules)
            with self._lock:
                if served is not None:
                    served.retired_at = time.time()
                    self._retired[served.version] = served
                self._current[workflow] = fresh
                self._let_go()
            return fresh

    def version(self, workflow: str, version: str) -> ServedModel | None:
        """The loaded model ``version`` of ``workflow`` (serving or retired), if it is still loaded."""
        with self._lock:
            served = self._current.get(workflow)
            if served is not None and served.version == version:
                return served
            old = self._retired.get(version)
            return old if old is not None and old.workflow.id == workflow else None

    def loaded(self) -> list[ServedModel]:
        with self._lock:
            return list(self._current.values()) + list(self._retired.values())

    def _let_go(self) -> None:
        """Unload retired models no cached conversation holds, or retired longer than ``keep_seconds``."""
        held, now = self.in_use(), time.time()
        for version, old in list(self._retired.items()):
            if version not in held or now - (old.retired_at or now) > self.keep_seconds:
                old.batcher.close()
                del self._retired[version]

    def close(self) -> None:
        with self._looking, self._lock:
            for served in self.loaded():
                served.batcher.close()
            self._current.clear()
            self._retired.clear()
