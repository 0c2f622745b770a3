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
        admit: Callable[[int, int], list[tuple[Program, "RowState | None"]]] | None = None,
        max_rows: int = 0,
    ) -> list[bool]:
        """Run every program to its end (or to ``max_len`` tokens, prefix included) after the
        shared ``prefix`` if any; returns which rows were truncated. ``on_step`` gets each batched
        forward's compute time, ``on_score`` (row, seconds) each row's own candidate scoring.
        ``resume`` (per row, or None) starts a row from the keys and values of tokens it was fed
        in an earlier run (its program feeds only what follows them); ``on_finish`` (row, state)
        gets each row's own keys and values when its program ends (a server keeps a
        conversation's between its turns; None if the row was cut off or fed nothing).

        Continuous batching: ``admit(slots, room)``, asked before every step, hands over new
        programs (with their ``RowState`` or None) for up to ``slots`` rows, each needing at
        most ``room`` tokens of its own: they take the rows of finished programs, and new rows up
        to ``max_rows``, and start at once beside the running ones. Rows are numbered in the order
        they came (the programs given first, then each admitted one)."""
        import numpy as np
        import torch

        n = len(programs)
        alive = [True] * n
        pending: list[object] = [self._advance(prog, None, i, alive) for i, prog in enumerate(programs)]
        rows = list(range(n))  # the original row of each batch position (finished rows are dropped)
        cut = [False] * n
        first = len(prefix.ids) if prefix is not None else 0
        room = max(1, max_len - first)  # own tokens a row may feed
        segments = [prefix.layers] if prefix is not None else []
        cache = RowCache(self.model, n, room)
        fill = np.zeros(n, dtype=np.int64)  # own tokens fed so far, per row
        queued: list[list[int]] = [[] for _ in range(n)]  # tokens ready to feed, per row
        logits = np.repeat(prefix.logits[None, :], n, axis=0) if prefix is not None else None
        for i, state in enumerate(resume or ()):
            if state is not None and 0 < state.length <= room:
                cache.restore(i, state)
                fill[i] = state.length
                if logits is None:
                    logits = np.zeros((n, state.logits.shape[-1]), dtype=np.float32)
                logits[i] = state.logits

        def finish(i: int) -> None:  # a program ended: were its last tokens still to fit?
            cut[rows[i]] = bool(fill[i] + len(queued[i]) > room)
            queued[i] = []
            if on_finish is not None:
                kept = not cut[rows[i]] and fill[i] > 0
                on_finish(rows[i], RowState(cache.saved(i, int(fill[i])), int(fill[i]), np.array(logits[i])) if kept else None)

        def admitted(new: list) -> None:  # programs that join the run: free rows first, then new ones
            nonlocal n, fill, logits
            free = [i for i in range(n) if not alive[i]]
            grow = max(0, len(new) - len(free))
            if grow:
                cache.grow(grow)
                programs.extend([None] * grow), pending.extend([None] * grow), rows.extend([0] * grow)
                queued.extend([] for _ in range(grow)), alive.extend([False] * grow)
                fill = np.concatenate([fill, np.zeros(grow, dtype=np.int64)])
                logits = np.concatenate([logits, np.repeat(prefix.logits[None, :], grow, axis=0)])
                free += list(range(n, n + grow))
                n += grow
            for i, (program, state) in zip(free, new):
                rows[i], programs[i], queued[i], alive[i] = len(cut), program, [], True
                cut.append(False)
                fill[i], logits[i] = 0, prefix.logits
                if state is not None and 0 < state.length <= room:
                    cache.restore(i, state)
                    fill[i], logits[i] = state.length, state.logits
                pending[i] = self._advance(program, None, i, alive)
                if not alive[i]:
                    finish(i)

        with torch.inference_mode(), AttentionContext(self.model, segments) as attention:
            while True:
                if admit is not None and prefix is not None:
                    new = admit(n - sum(alive) + max(0, max_rows - n), room)
                    if new:
                        admitted(new)
                if not any(alive):
                    break
                drafts: dict[int, list[int]] = {}  # row: the drafted tokens it feeds this step
                if 2 * sum(alive) <= n and n > 1:  # most rows are done: go on with the others only
                    keep = [i for i in range(n) if alive[i]]
                    cache.keep(torch.tensor(keep, device=self.device))
                    programs, pending, rows = [programs[i] for i in keep], [pending[i] for i in keep], [rows[i] for i in keep]
                    queued, fill = [queued[i] for i in keep], fill[keep]
                    logits = logits[keep] if logits is not None else None
                    n, alive = len(keep), [True] * len(keep)
                for i in range(n):
                    if not alive[i]:
                        continue
                    if not queued[i]:  # the last forward predicted after this row's last token
                        while isinstance(pending[i], Score):
                            context = segments + ([cache.row(i, int(fill[i]))] if fill[i] else [])
                            scoring = time.perf_counter()
                            key = score_candidates(self.model, context, first + int(fill[i]), logits[i],
                                                   pending[i].candidates, pending[i].counted)
                            if on_score is not None:
                                on_score(rows[i], time.perf_counter() - scoring)
                            pending[i] = self._advance(programs[i], key, i, alive)
                        action = pending[i]
                        if isinstance(action, Choice):
                            token = self._greedy(action, logits[i])
                            queued[i].append(token)
                            room_left = min(self.max_run, room - int(fill[i])) - 1
                            if action.follow is not None and self.max_draft and room_left > 0:
                                draft = action.follow(token, min(self.max_draft, room_left))
                                if draft:
                                    drafts[i] = draft
                            pending[i] = self._advance(programs[i], token, i, alive)
                            if i in drafts and alive[i] and isinstance(pending[i], Choice):
                                queued[i] += drafts[i]  # fed now, kept after the forward as far as they hold
                            else:
                                drafts.pop(i, None)
                    while alive[i] and isinstance(pending[i], tuple) and len(queued[i]) < self.max_run:
                        queued[i].append(pending[i][1])
                        pending[i] = self._advance(programs[i], None, i, alive)
                    if not alive[i]:
                        finish(i)
                    elif fill[i] >= room:  # no room left for what it still has to say
                        cut[rows[i]], alive[i], queued[i] = True, False, []
                ready = [min(len(queued[i]), self.max_run, room - int(fill[i])) for i in range(n)]
                if not any(ready):
                    break
                tokens: list[int] = []
                for i, k in enumerate(ready):
                    tokens += queued[i][:k]
                    queued[i] = queued[i][k:]
                step = RowStep.of(cache, fill, ready)
                attention.step = step
                started = time.perf_counter()
                hidden = self.decoder(
                    input_ids=torch.tensor([tokens], device=self.device),
                    position_ids=(step.token_positions + first)[None].to(self.device),
                    use_cache=False,
                    attention_context=attention,
                ).last_hidden_state
                new = self.head(hidden[0, step.last]).float().cpu().numpy()
                logits = new if logits is None else np.where(np.asarray(ready)[:, None] > 0, new, logits)
                if drafts:
                    self._verify(drafts, hidden[0], step, logits, programs, pending, alive, fill, ready)
                if on_step is not None:
                    on_step(time.perf_counter() - started)
                fill += np.asarray(ready, dtype=np.int64)
                for i in drafts:
                    if not alive[i]:
                        finish(i)
        return cut

    def _greedy(self, action: Choice, row) -> int:
        return greedy(action, row, self.penalties)

    def _verify(self, drafts: dict[int, list[int]], hidden, step: "RowStep", logits, programs, pending, alive,
                fill, ready) -> None:
        """Keep of each row's draft the tokens greedy decoding picks, in order, up to the first it
        does not: the program gets those, ``ready`` counts only them (the rest of the row's cache
        is written over later), and the row's prediction is the one after its last kept token."""
        import torch

        rows = sorted(drafts)
        # each drafting row fed [choice, d1 .. dk]: the predictions after choice .. d(k-1) decide d1 .. dk
        index = torch.cat([torch.arange(int(step.last[i]) - len(drafts[i]), int(step.last[i])) for i in rows])
        predicted = self.head(hidden[index]).float().cpu().numpy()
        at = 0
        for i in rows:
            draft = drafts[i]
            kept = 0
            for j, token in enumerate(draft):
                if not (alive[i] and isinstance(pending[i], Choice)) or self._greedy(pending[i], predicted[at + j]) != token:
                    break
                pending[i] = self._advance(programs[i], token, i, alive)
                kept += 1
            if kept < len(draft):  # the prediction after the last kept token
                logits[i] = predicted[at + kept]
            ready[i] -= len(draft) - kept
            at += len(draft)

    @staticmethod
    def _advance(prog: Program, value, i: int, alive: list[bool]):
        try:
            return prog.send(value) if value is not None else next(prog)
        except StopIteration:
            alive[i] = False
            return None
