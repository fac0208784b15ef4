"""The model card (report.md) and the loss plot it shows."""

from __future__ import annotations

from pathlib import Path

import pytest


def _pixels_near(png: Path, rgb: tuple[int, int, int], tol: int = 12) -> int:
    import numpy as np
    from matplotlib.image import imread

    img = (imread(png)[..., :3] * 255).round().astype(int)
    return int((np.abs(img - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_loss_plot_draws_train_line_and_eval_points(tmp_path):
    from matplotlib.image import imread

    from ftpack.training.lossplot import plot_loss

    rows = [{"step": s, "loss": 3.0 / s} for s in range(1, 11)] + [{"step": 10, "eval_loss": 0.5}]
    png = plot_loss(rows, tmp_path / "train" / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(png).shape[:2] == (400, 640)
    assert _pixels_near(png, (31, 119, 180)) > 200  # the train curve (matplotlib's tab:blue)
    assert _pixels_near(png, (214, 39, 40)) > 20  # the eval point (tab:red)
    assert not list(png.parent.glob("*.partial*"))  # written atomically


def test_loss_plot_without_any_loss_is_still_an_image(tmp_path):
    from ftpack.training.lossplot import plot_loss

    png = plot_loss([], tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _pixels_near(png, (31, 119, 180)) == 0
