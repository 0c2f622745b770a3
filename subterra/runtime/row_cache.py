"""Every row's own keys and values in a batch whose rows do not advance together.

``RowCache`` holds them, preallocated per layer; ``RowState`` is one row's part saved (where a
conversation's next turn resumes); ``RowStep`` lays one forward's tokens (each row its own run,
packed into one sequence) over the cache, which the shared-context attention
(``subterra.runtime.attention``) reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class RowCache:
    """Every row's own keys and values, per layer, preallocated: keys [rows, kv_heads, head_dim,
    capacity] (transposed), values [rows, kv_heads, capacity, head_dim].

    Rows do not advance together: a forward feeds each row its own run of tokens (a user's message
    in one go, one chosen token), written at that row's ``fill``. Only a row's first ``fill``
    positions are ever read for it.
    """

    def __init__(self, model, rows: int, capacity: int):
        import torch

        c = model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        param = next(model.parameters())
        layers, kind = range(c.num_hidden_layers), dict(dtype=param.dtype, device=param.device)
        # keys transposed: a query times them is a plain matrix product over the filled part;
        # a row's attention reads only its own filled positions, so the rest is never initialised
        self.keys = [torch.empty((rows, kv_heads, head_dim, capacity), **kind) for _ in layers]
        self.values = [torch.empty((rows, kv_heads, capacity, head_dim), **kind) for _ in layers]
        self.group = c.num_attention_heads // kv_heads

    def keep(self, index) -> None:
        """Only the rows ``index`` (a tensor of row numbers) go on."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

    def grow(self, k: int) -> None:
        """``k`` more rows, empty."""
        import torch

        self.keys = [torch.cat([x, x.new_empty((k, *x.shape[1:]))]) for x in self.keys]
        self.values = [torch.cat([x, x.new_empty((k, *x.shape[1:]))]) for x in self.values]

    def widen(self, capacity: int) -> None:
        """Room for ``capacity`` positions per row (more than it has), what the rows hold kept."""
        def wider(x, axis: int):
            out = x.new_empty((*x.shape[:axis], capacity, *x.shape[axis + 1 :]))
            out.narrow(axis, 0, x.shape[axis]).copy_(x)
            return out

        self.keys = [wider(k, 3) for k in self.keys]
        self.values = [wider(v, 2) for v in self.values]

    def restore(self, i: int, state: "RowState") -> None:
        """Row ``i`` starts with ``state``'s keys and values (its first ``state.length`` positions)."""
        for layer, (k, v) in enumerate(state.layers):
            self.keys[layer][i, :, :, : state.length] = k
            self.values[layer][i, :, : state.length] = v

    def saved(self, i: int, length: int) -> list[tuple]:
        """Copies of row ``i``'s first ``length`` keys (transposed) and values, per layer."""
        return [(k[i, :, :, :length].clone(), v[i, :, :length].clone()) for k, v in zip(self.keys, self.values)]

    def row(self, i: int, length: int) -> list[tuple]:
        """Row ``i``'s first ``length`` positions, per layer (batch 1): a context segment."""
        return [(k[i : i + 1, :, :, :length].transpose(2, 3), v[i : i + 1, :, :length]) for k, v in zip(self.keys, self.values)]


@dataclass
class RowState:
    """A row's own keys (transposed, [kv_heads, head_dim, length]) and values ([kv_heads, length,
    head_dim]) per layer, and the model's prediction after its last token: where a conversation's
    next turn starts (``Lockstep.run``'s ``resume``)."""

    layers: list[tuple]
    length: int
    logits: object  # numpy array (vocab,)

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


@dataclass
class RowRun:
    """The tokens one row feeds in a ``RowStep``: packed at ``start``..``start + n``, they see its
    first ``length`` positions (its cache up to and with them); ``blocked`` [group * n, n]
    (query (g, j) at g * n + j) masks the later tokens of the run itself, None for one token."""

    row: int
    start: int
    n: int
    length: int
    blocked: object


@dataclass
class RowStep:
    """One forward over a ``RowCache``, its rows' tokens packed into one sequence (no padding).

    Row r feeds ``ready[r]`` tokens, written at positions ``fill[r]`` on; each sees its row's
    positions up to its own. Attention runs row by row (``runs``), each over its own row of the
    cache as it lies, up to its own length: its cost follows each row's own context, never the
    longest row's, and no row's keys are copied.
    """

    cache: RowCache
    token_rows: object  # [T] the row of each packed token
    token_positions: object  # [T] where it is written
    last: object  # [rows] the packed index of each row's last token (0 for a row feeding none)
    runs: list[RowRun] = field(default_factory=list)  # the rows that feed tokens this step

    @classmethod
    def of(cls, cache: RowCache, fill, ready) -> "RowStep":
        import numpy as np
        import torch

        fill, ready = np.asarray(fill, dtype=np.int64), np.asarray(ready, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(ready)[:-1]])
        token_rows = np.repeat(np.arange(len(ready)), ready)
        token_positions = np.concatenate([fill[r] + np.arange(k) for r, k in enumerate(ready)]) if ready.sum() else np.zeros(0, np.int64)
        last = np.where(ready > 0, starts + ready - 1, 0)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        runs = []
        for r in np.flatnonzero(ready).tolist():
            n, at = int(ready[r]), int(fill[r])
            blocked = None
            if n > 1:  # a token of the run sees the run's tokens up to its own
                later = np.arange(n)[None, :] > np.arange(n)[:, None]
                blocked = t(np.tile(later, (cache.group, 1)))
            runs.append(RowRun(r, int(starts[r]), n, at + n, blocked))
        return cls(cache, t(token_rows), t(token_positions), t(last), runs)
