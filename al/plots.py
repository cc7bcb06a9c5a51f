"""Figures logged with runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def parity(pred: np.ndarray, target: np.ndarray, title: str = "") -> Any:
    """Predicted vs reference energy (eV), with MAE in the title."""
    pred, target = np.asarray(pred), np.asarray(target)
    mae = float(np.abs(pred - target).mean()) if pred.size else float("nan")
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110, layout="tight")
    ax.scatter(target, pred, s=3, alpha=0.4, lw=0)
    if target.size:
        lo, hi = float(min(target.min(), pred.min())), float(max(target.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("reference H_atomization (eV)")
    ax.set_ylabel("predicted (eV)")
    ax.set_title(f"{title} MAE = {mae:.4f} eV (n = {pred.size})".strip())
    return fig


def training_curves(history: list[Any]) -> Any:
    """Train loss, validation MAE and learning rate per epoch."""
    epochs = [h.epoch for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=100, layout="tight")
    axes[0].plot(epochs, [h.train_loss for h in history])
    axes[0].set_ylabel("train loss (scaled MSE)")
    axes[1].plot(epochs, [h.val_mae for h in history])
    axes[1].set_ylabel("validation MAE (eV)")
    axes[2].plot(epochs, [h.lr for h in history])
    axes[2].set_ylabel("learning rate")
    for ax in axes[:2]:
        ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
    return fig


def campaign_figures(
    curve: list[tuple[int, float]],
    mean: np.ndarray,
    std: np.ndarray | None,
    target: np.ndarray,
    round_: int,
) -> list[Any]:
    """Learning curve, parity and std-vs-error figures.

    Args:
        curve: ``(n_labelled, test MAE)`` per round so far.
        mean, std: the prediction on the test set, ``[n]`` each (``std`` may be None).
        target: the reference energies, ``[n]``.
    """
    fig1, ax = plt.subplots(figsize=(5, 3.6), dpi=100, layout="tight")
    if curve:
        n, mae = zip(*curve, strict=True)
        ax.plot(n, mae, "o-")
    ax.set_xlabel("labelled molecules")
    ax.set_ylabel("test MAE (eV)")
    ax.set_yscale("log")
    ax.set_title(f"learning curve (round {round_})")
    fig2 = parity(mean, target, f"round {round_}")
    fig3, ax = plt.subplots(figsize=(4.5, 4), dpi=100, layout="tight")
    if std is not None:
        ax.scatter(std, np.abs(mean - target), s=3, alpha=0.4, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("predicted std (eV)")
    ax.set_ylabel("|error| (eV)")
    return [fig1, fig2, fig3]


# --- the comparison report (al.report) --------------------------------------------------------
def plot_curves(
    curves: pd.DataFrame, xlabel: str, title: str, path: Path, log_x: bool = False
) -> Path:
    """Mean test MAE per arm with its confidence band, log-scale y; saved as PNG at ``path``.

    ``curves``: columns ``arm, x, mean, lo, hi, n_seeds`` (one row per arm and point, as
    :func:`al.report.stats.learning_curves` gives them).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110, layout="tight")
    for arm, c in curves.groupby("arm", sort=True):
        (line,) = ax.plot(
            c["x"],
            c["mean"],
            marker="o" if len(c) <= 30 else None,
            ms=3,
            label=f"{arm} (n={int(c['n_seeds'].max())})",
        )
        if c["lo"].notna().any():
            ax.fill_between(
                c["x"], c["lo"].clip(lower=1e-12), c["hi"], color=line.get_color(), alpha=0.2, lw=0
            )
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test MAE (eV)")
    _finish(fig, ax, title, path, which="both")
    return path


def plot_paired(steps: pd.DataFrame, baseline: str, title: str, path: Path) -> Path:
    """Paired difference arm - baseline of test MAE vs labels, with its band; PNG at ``path``.

    ``steps``: columns ``arm, step, mean, lo, hi`` (:func:`al.report.paired.paired_differences`
    of each arm, stacked).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110, layout="tight")
    for arm, d in steps.groupby("arm", sort=True):
        (line,) = ax.plot(
            d["step"], d["mean"], marker="o" if len(d) <= 30 else None, ms=3, label=arm
        )
        if d["lo"].notna().any():
            ax.fill_between(d["step"], d["lo"], d["hi"], color=line.get_color(), alpha=0.2, lw=0)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("labels (n_labelled)")
    ax.set_ylabel(f"test MAE − {baseline} (eV)")
    _finish(fig, ax, title, path, which="major")
    return path


def _finish(fig: Any, ax: Any, title: str, path: Path, which: str) -> None:
    """Title, grid, legend; save to ``path`` and close the figure."""
    ax.set_title(title, fontsize=10)
    ax.grid(True, which=which, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    plt.close(fig)
