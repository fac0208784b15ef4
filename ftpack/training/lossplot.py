"""The loss curve of a training run as a PNG (train/loss.png), drawn with matplotlib.

Rows come from :func:`ftpack.training.train.loss_rows` (step, loss, eval_loss, ...).
The Agg backend renders without a display, so this works on servers and in CI; the
figure is private to the call (no pyplot state), so it is safe in any process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ftpack.core.atomic import atomic_path


def plot_loss(rows: Sequence[dict[str, Any]], path: Path, *, title: str | None = None,
              size: tuple[float, float] = (6.4, 4.0), dpi: int = 100) -> Path:
    """Write the training loss (line) and eval loss (points) against the step to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [(r["step"], float(r["loss"])) for r in rows if r.get("loss") not in (None, "")]
    evals = [(r["step"], float(r["eval_loss"])) for r in rows if r.get("eval_loss") not in (None, "")]
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), color="tab:blue", linewidth=1.5, marker="." if len(train) < 30 else None,
                label="train loss")
    if evals:
        ax.plot(*zip(*evals), color="tab:red", linestyle="none", marker="o", label="eval loss")
    if not train and not evals:
        ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
