"""Plots shown in the Dagster UI (PNG bytes; matplotlib with the Agg backend)."""

from __future__ import annotations

import io


def loss_curve_png(curve: list[tuple[int, float]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=100)
    if curve:
        steps, losses = zip(*curve)
        ax.plot(steps, losses, color="#4f81bd")
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
