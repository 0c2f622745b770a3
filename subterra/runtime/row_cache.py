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
        # keys transposed: a query times them is a plain matrix product over the filled part
        # keys past a row's fill are masked before the softmax (never read); values there are
        # multiplied by a weight of 0, so they must be finite: zeros
        self.keys = [torch.empty((rows, kv_heads, head_dim, capacity), **kind) for _ in layers]
        self.values = [torch.zeros((rows, kv_heads, capacity, head_dim), **kind) for _ in layers]
        self.group = c.num_attention_heads // kv_heads

    def keep(self, index) -> None:
        """Only the rows ``index`` (a tensor of row numbers) go on."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

    def grow(self, k: int) -> None:
        """``k`` more rows, empty."""
        import torch

        self.keys = [torch.cat([x, x.new_empty((k, *x.shape[1:]))]) for x in self.keys]
        self.values = [torch.cat([x, x.new_zeros((k, *x.shape[1:]))]) for x in self.values]

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
class RunGroup:
    """Rows of a ``RowStep`` feeding runs of similar length: their tokens but the last, attended
    over copies of these rows' caches."""

    rows: object  # [s] the rows
    index: object  # [s, E] packed index of each of their other tokens (padded to the group's longest)
    valid: object  # [s, E] bool
    allowed: object  # [s, 1, group * E, width]
    width: int


@dataclass
class RowStep:
    """One forward over a ``RowCache``, its rows' tokens packed into one sequence (no padding).

    Row r feeds ``ready[r]`` tokens, written at positions ``fill[r]`` on; each sees its row's
    positions up to its own. Attention runs in two parts, so that its cost follows the tokens fed,
    not rows x longest run: every row's *last* token (the one whose prediction is read) as one
    batched decode over all rows' caches, and the rest of the longer runs (``extra``) over the
    caches of those rows only, grouped by run length (up to 2, 4, 8, ... tokens): each group's
    runs are padded to its longest, not to the longest of the step (a drafted say line of 48
    tokens beside drafts of 3 padded the extra attention's work to 2.3x what it needed).
    """

    cache: RowCache
    token_rows: object  # [T] the row of each packed token
    token_positions: object  # [T] where it is written
    last: object  # [rows] the packed index of each row's last token (0 for a row feeding none)
    fed: object  # [rows] bool: the row feeds tokens this step
    main_allowed: object  # [rows, 1, 1, width]
    width: int
    extra: list["RunGroup"] = field(default_factory=list)  # the rows feeding more than one token, by run length

    @classmethod
    def of(cls, cache: RowCache, fill, ready) -> "RowStep":
        import numpy as np
        import torch

        fill, ready = np.asarray(fill, dtype=np.int64), np.asarray(ready, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(ready)[:-1]])
        token_rows = np.repeat(np.arange(len(ready)), ready)
        token_positions = np.concatenate([fill[r] + np.arange(k) for r, k in enumerate(ready)]) if ready.sum() else np.zeros(0, np.int64)
        fed = ready > 0
        last = np.where(fed, starts + ready - 1, 0)
        last_pos = np.where(fed, fill + ready - 1, 0)
        width = int(last_pos.max()) + 1
        main_allowed = np.arange(width)[None, :] <= last_pos[:, None]
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        step = cls(cache, t(token_rows), t(token_positions), t(last), t(fed), t(main_allowed[:, None, None, :]), width)
        longer = np.flatnonzero(ready > 1)
        lengths = np.ceil(np.log2(ready[longer] - 1)).astype(np.int64)  # a run's other tokens, by powers of 2
        for length in np.unique(lengths):
            extra = longer[lengths == length]
            e = int(ready[extra].max()) - 1
            j = np.arange(e)[None, :]
            valid = j < (ready[extra] - 1)[:, None]
            index = np.where(valid, starts[extra][:, None] + j, starts[extra][:, None])
            positions = np.where(valid, fill[extra][:, None] + j, fill[extra][:, None])
            extra_width = int(positions.max()) + 1
            allowed = np.arange(extra_width)[None, None, :] <= positions[:, :, None]  # [s, E, width]
            allowed = np.tile(allowed[:, None], (1, 1, cache.group, 1))  # query (g, j) at g * E + j
            step.extra.append(RunGroup(t(extra), t(index), t(valid), t(allowed), extra_width))
        return step
