"""Many conversations at once, one batched, KV-cached forward per step (``Lockstep``).

Every step, each row feeds its own choice (one token) or a forced stretch whole (the form's
structure, a user's message), all rows packed into one forward with no padding; a context every
row shares (the system prompt) is encoded once and every row attends to that one copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from subterra.runtime.actions import Choice, Program, Score
from subterra.runtime.attention import AttentionContext
from subterra.runtime.row_cache import RowCache, RowState, RowStep
from subterra.runtime.scoring import score_candidates


MAX_RUN = 64  # a row feeds at most this many tokens in one forward
MAX_DRAFT = 48  # drafted tokens a row feeds after its choice (``Choice.follow``)
GROWTH = 512  # a run's room that grows for an admitted program takes this many tokens more, so it grows seldom


@dataclass
class Prefix:
    """A context every row of a batch starts with (a route's system prompt), encoded once: its
    tokens, its key/value tensors per layer (batch 1) and the model's prediction after it."""

    ids: list[int]
    layers: list[tuple]
    logits: object  # numpy array (vocab,)


def penalties(vocab: int, banned_free: Sequence[int], masks: dict[str, Sequence[int]] | None = None) -> dict:
    """Per mask name (None: a free choice's default, ``banned_free``), what each token's
    prediction gets added before ``greedy`` picks: -inf for the banned ones."""
    import numpy as np

    out: dict[str | None, object] = {}
    for name, banned in {None: banned_free, **(masks or {})}.items():
        out[name] = np.zeros(vocab, dtype=np.float32)
        out[name][[b for b in banned if b < vocab]] = -np.inf
    return out


def greedy(action: Choice, row, penalties: dict) -> int:
    """The token ``action`` takes after the prediction ``row``: the likeliest allowed one (a free
    choice: the likeliest its mask's ``penalties`` leave)."""
    import numpy as np

    if action.allowed is None:
        return int(np.argmax(row + penalties[action.mask]))
    allowed = action.allowed
    return allowed[int(np.argmax(row[allowed]))] if len(allowed) > 1 else allowed[0]


class Lockstep:
    """Drives many row programs through one batched, KV-cached forward per step.

    Every step feeds every running row the tokens it has ready: its own choice (one token, decoded
    greedily from the last forward's prediction), or a forced stretch (a user's message, the form's
    fixed structure) whole, up to ``max_run`` tokens. So a 30-token user message takes one forward,
    not thirty, while the other rows decode: a compile's eval runs about half the forwards it would
    one token per row per step. The rows' tokens go through the model packed into one sequence (no
    padding); each row's own keys and values go to a preallocated ``RowCache`` at its own fill.

    Rows may share a ``Prefix``: it is computed once (``encode_prefix``) and every row attends to
    that one copy (``AttentionContext``): it is never re-encoded, nor copied per row. A row still
    running when its room is full is cut off (``truncated``). When half the rows are done, the
    batch goes on with the others only, so a few long conversations do not keep paying for the
    finished ones. ``Choice(None)`` bans ``banned_free``; ``Choice(None, mask=NAME)`` bans
    ``masks[NAME]``.

    Speculative decoding: a choice that offers a draft (``Choice.follow``: a say line the model is
    likely writing, ``subterra.drafts``) feeds the chosen token and up to ``max_draft`` drafted
    ones in the same forward. The row keeps the drafted tokens greedy decoding picks, read from
    that forward's predictions in order, up to the first it would not: that is where the next
    choice is made, from the prediction already there. A row thus writes a known say line in one or
    two forwards instead of one per token; what it writes is what it would write without drafts.
    """

    def __init__(self, model, banned_free: Sequence[int], masks: dict[str, Sequence[int]] | None = None,
                 max_run: int = MAX_RUN, max_draft: int = MAX_DRAFT):
        self.model = model
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.max_run = max_run
        self.max_draft = max_draft
        self.device = next(model.parameters()).device
        self.penalties = penalties(self.head.weight.shape[0], banned_free, masks)

    def encode_prefix(self, ids: Sequence[int]) -> Prefix:
        """Run the shared context once (batch 1) and keep its cache and last prediction."""
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True)
        layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return Prefix(list(ids), layers, out.logits[0, -1, :].float().cpu().numpy())

    def run(
        self,
        programs: list[Program],
        max_len: int,
        on_step: Callable[[float], None] | None = None,
        prefix: Prefix | None = None,
        on_score: Callable[[int, float], None] | None = None,
        resume: Sequence["RowState | None"] | None = None,
        on_finish: Callable[[int, "RowState | None"], None] | None = None,
        admit: Callable[[int, int], list[tuple[Program, "RowState | None", int]]] | None = None,
        max_rows: int = 0,
        grow_to: int = 0,
    ) -> list[bool]:
        """Run every program to its end (or to ``max_len`` tokens, prefix included) after the
        shared ``prefix`` if any; returns which rows were truncated. ``on_step`` gets each batched
        forward's compute time, ``on_score`` (row, seconds) each row's own candidate scoring.
        ``resume`` (per row, or None) starts a row from the keys and values of tokens it was fed
        in an earlier run (its program feeds only what follows them); ``on_finish`` (row, state)
        gets each row's own keys and values when its program ends (a server keeps a
        conversation's between its turns; None if the row was cut off or fed nothing).

        Continuous batching: ``admit(slots, room)``, asked before every step, hands over new
        programs (each with its ``RowState`` or None, and the tokens of its own it may need, at
        most ``room``) for up to ``slots`` rows: they take the rows of finished programs, and new
        rows up to ``max_rows``, and start at once beside the running ones. The room may grow up
        to ``grow_to`` tokens (prefix included) for a program that needs more than ``max_len``.
        Rows are numbered in the order they came (the programs given first, then each admitted one)."""
        import torch

        batch = _Run(self, programs, max_len, prefix, resume, on_score, on_finish)
        limit = max(batch.room, grow_to - batch.first)  # the room a row may grow to
        with torch.inference_mode(), AttentionContext(self.model, batch.segments) as attention:
            while True:
                if admit is not None and prefix is not None:
                    new = admit(batch.open_rows(max_rows), limit)
                    if new:
                        batch.admit(new, limit)
                if not any(batch.alive):
                    break
                drafts: dict[int, list[int]] = {}  # row: the drafted tokens it feeds this step
                if 2 * sum(batch.alive) <= batch.n and batch.n > 1:  # most rows are done: go on with the others only
                    batch.keep_alive_rows()
                for i in range(batch.n):
                    if batch.alive[i]:
                        batch.prepare(i, drafts)
                if not batch.feed(attention, drafts, on_step):
                    break
        return batch.cut


class _Run:
    """The rows of one ``Lockstep.run`` and the steps that move them on.

    Per row (its position in the batch; ``rows`` maps it to the row number the caller knows): its
    program, the action it is waiting on (``pending``), the tokens it has ready to feed
    (``queued``), how many of its own tokens the cache holds (``fill``), the model's prediction
    after its last one (``logits``), and whether its program still runs (``alive``). ``cut`` is
    per row number: whether the row ran out of room.
    """

    def __init__(self, driver: Lockstep, programs: list[Program], max_len: int, prefix: Prefix | None,
                 resume: Sequence[RowState | None] | None, on_score: Callable[[int, float], None] | None,
                 on_finish: Callable[[int, RowState | None], None] | None):
        import numpy as np

        self.driver, self.prefix, self.on_score, self.on_finish = driver, prefix, on_score, on_finish
        n = len(programs)
        self.programs = programs
        self.alive = [True] * n
        self.pending: list[object] = [None] * n
        for i in range(n):
            self.advance(i)
        self.rows = list(range(n))  # the original row of each batch position (finished rows are dropped)
        self.cut = [False] * n
        self.first = len(prefix.ids) if prefix is not None else 0
        self.room = max(1, max_len - self.first)  # own tokens a row may feed
        self.segments = [prefix.layers] if prefix is not None else []
        self.cache = RowCache(driver.model, n, self.room)
        self.fill = np.zeros(n, dtype=np.int64)  # own tokens fed so far, per row
        self.queued: list[list[int]] = [[] for _ in range(n)]  # tokens ready to feed, per row
        self.logits = np.repeat(prefix.logits[None, :], n, axis=0) if prefix is not None else None
        for i, state in enumerate(resume or ()):
            if state is not None and 0 < state.length <= self.room:
                self.cache.restore(i, state)
                self.fill[i] = state.length
                if self.logits is None:
                    self.logits = np.zeros((n, state.logits.shape[-1]), dtype=np.float32)
                self.logits[i] = state.logits

    @property
    def n(self) -> int:
        """The rows of the batch, finished ones included until ``keep_alive_rows``."""
        return len(self.alive)

    def advance(self, i: int, value=None) -> None:
        """Send row ``i``'s program ``value`` (None: go on) and keep the action it asks next; a
        program that ends leaves the row not alive."""
        program = self.programs[i]
        try:
            self.pending[i] = program.send(value) if value is not None else next(program)
        except StopIteration:
            self.alive[i] = False
            self.pending[i] = None

    def finish(self, i: int) -> None:
        """Row ``i``'s program ended: were its last tokens still to fit? ``on_finish`` gets its
        keys and values (None if it was cut off or fed nothing)."""
        import numpy as np

        fill, row = int(self.fill[i]), self.rows[i]
        self.cut[row] = bool(fill + len(self.queued[i]) > self.room)
        self.queued[i] = []
        if self.on_finish is not None:
            kept = not self.cut[row] and fill > 0
            self.on_finish(row, RowState(self.cache.saved(i, fill), fill, np.array(self.logits[i])) if kept else None)

    def open_rows(self, max_rows: int) -> int:
        """How many programs may join: the rows of finished ones, and new rows up to ``max_rows``."""
        return self.n - sum(self.alive) + max(0, max_rows - self.n)

    def admit(self, new: list[tuple[Program, RowState | None, int]], limit: int) -> None:
        """Programs that join the run (each with its ``RowState`` or None and the tokens of its own
        it may need): the rows of finished programs first, then new ones; each starts after the
        prefix, or its state. The room grows (up to ``limit``) for one that needs more."""
        import numpy as np

        need = max(length for _, _, length in new)
        if need > self.room:
            self.room = min(limit, need + GROWTH)
            self.cache.widen(self.room)
        prefix = self.prefix
        free = [i for i in range(self.n) if not self.alive[i]]
        grow = max(0, len(new) - len(free))
        if grow:
            n = self.n
            self.cache.grow(grow)
            self.programs.extend([None] * grow), self.pending.extend([None] * grow), self.rows.extend([0] * grow)
            self.queued.extend([] for _ in range(grow)), self.alive.extend([False] * grow)
            self.fill = np.concatenate([self.fill, np.zeros(grow, dtype=np.int64)])
            self.logits = np.concatenate([self.logits, np.repeat(prefix.logits[None, :], grow, axis=0)])
            free += list(range(n, n + grow))
        for i, (program, state, _) in zip(free, new):
            self.rows[i], self.programs[i], self.queued[i], self.alive[i] = len(self.cut), program, [], True
            self.cut.append(False)
            self.fill[i], self.logits[i] = 0, prefix.logits
            if state is not None and 0 < state.length <= self.room:
                self.cache.restore(i, state)
                self.fill[i], self.logits[i] = state.length, state.logits
            self.advance(i)
            if not self.alive[i]:
                self.finish(i)

    def keep_alive_rows(self) -> None:
        """Drop the finished rows from the batch (and from the cache): the others go on alone."""
        import torch

        keep = [i for i in range(self.n) if self.alive[i]]
        self.cache.keep(torch.tensor(keep, device=self.driver.device))
        self.programs, self.pending = [self.programs[i] for i in keep], [self.pending[i] for i in keep]
        self.rows = [self.rows[i] for i in keep]
        self.queued, self.fill = [self.queued[i] for i in keep], self.fill[keep]
        self.logits = self.logits[keep] if self.logits is not None else None
        self.alive = [True] * len(keep)

    def prepare(self, i: int, drafts: dict[int, list[int]]) -> None:
        """Queue what row ``i`` feeds next: when the last forward predicted after its last token,
        the candidates it asks to score and its choice (with the draft it offers); then the forced
        tokens that follow, up to ``max_run``. A row that ended is finished, one out of room cut off."""
        if not self.queued[i]:  # the last forward predicted after this row's last token
            self.score(i)
            self.choose(i, drafts)
        while self.alive[i] and isinstance(self.pending[i], tuple) and len(self.queued[i]) < self.driver.max_run:
            self.queued[i].append(self.pending[i][1])
            self.advance(i)
        if not self.alive[i]:
            self.finish(i)
        elif self.fill[i] >= self.room:  # no room left for what it still has to say
            self.cut[self.rows[i]], self.alive[i], self.queued[i] = True, False, []

    def score(self, i: int) -> None:
        """Answer each ``Score`` row ``i`` asks, over the prefix and the row's own tokens."""
        while isinstance(self.pending[i], Score):
            fill = int(self.fill[i])
            context = self.segments + ([self.cache.row(i, fill)] if fill else [])
            scoring = time.perf_counter()
            key = score_candidates(self.driver.model, context, self.first + fill, self.logits[i],
                                   self.pending[i].candidates, self.pending[i].counted)
            if self.on_score is not None:
                self.on_score(self.rows[i], time.perf_counter() - scoring)
            self.advance(i, key)

    def choose(self, i: int, drafts: dict[int, list[int]]) -> None:
        """Row ``i``'s ``Choice``: the greedy token, queued, and the draft after it (``drafts[i]``)
        when the row's next action is another choice the draft can answer."""
        action = self.pending[i]
        if not isinstance(action, Choice):
            return
        driver = self.driver
        token = greedy(action, self.logits[i], driver.penalties)
        self.queued[i].append(token)
        room_left = min(driver.max_run, self.room - int(self.fill[i])) - 1
        if action.follow is not None and driver.max_draft and room_left > 0:
            draft = action.follow(token, min(driver.max_draft, room_left))
            if draft:
                drafts[i] = draft
        self.advance(i, token)
        if i in drafts and self.alive[i] and isinstance(self.pending[i], Choice):
            self.queued[i] += drafts[i]  # fed now, kept after the forward as far as they hold
        else:
            drafts.pop(i, None)

    def feed(self, attention: AttentionContext, drafts: dict[int, list[int]],
             on_step: Callable[[float], None] | None) -> bool:
        """One batched forward of every row's ready tokens (up to ``max_run`` and its room),
        packed into one sequence; keeps each fed row's new prediction and checks its draft
        (``verify``). False if no row had a token to feed."""
        import numpy as np
        import torch

        driver = self.driver
        ready = [min(len(self.queued[i]), driver.max_run, self.room - int(self.fill[i])) for i in range(self.n)]
        if not any(ready):
            return False
        tokens: list[int] = []
        for i, k in enumerate(ready):
            tokens += self.queued[i][:k]
            self.queued[i] = self.queued[i][k:]
        step = RowStep.of(self.cache, self.fill, ready)
        attention.step = step
        started = time.perf_counter()
        hidden = driver.decoder(
            input_ids=torch.tensor([tokens], device=driver.device),
            position_ids=(step.token_positions + self.first)[None].to(driver.device),
            use_cache=False,
            attention_context=attention,
        ).last_hidden_state
        new = driver.head(hidden[0, step.last]).float().cpu().numpy()
        self.logits = new if self.logits is None else np.where(np.asarray(ready)[:, None] > 0, new, self.logits)
        if drafts:
            self.verify(drafts, hidden[0], step, ready)
        if on_step is not None:
            on_step(time.perf_counter() - started)
        self.fill += np.asarray(ready, dtype=np.int64)
        for i in drafts:
            if not self.alive[i]:
                self.finish(i)
        return True

    def verify(self, drafts: dict[int, list[int]], hidden, step: RowStep, ready: list[int]) -> None:
        """Keep of each row's draft the tokens greedy decoding picks, in order, up to the first it
        does not: the program gets those, ``ready`` counts only them (the rest of the row's cache
        is written over later), and the row's prediction is the one after its last kept token."""
        import torch

        driver = self.driver
        rows = sorted(drafts)
        # each drafting row fed [choice, d1 .. dk]: the predictions after choice .. d(k-1) decide d1 .. dk
        index = torch.cat([torch.arange(int(step.last[i]) - len(drafts[i]), int(step.last[i])) for i in rows])
        predicted = driver.head(hidden[index]).float().cpu().numpy()
        at = 0
        for i in rows:
            draft = drafts[i]
            kept = 0
            for j, token in enumerate(draft):
                action = self.pending[i]
                if not (self.alive[i] and isinstance(action, Choice)) or greedy(action, predicted[at + j], driver.penalties) != token:
                    break
                self.advance(i, token)
                kept += 1
            if kept < len(draft):  # the prediction after the last kept token
                self.logits[i] = predicted[at + kept]
            ready[i] -= len(draft) - kept
            at += len(draft)
