"""Figures logged with runs (matplotlib, headless)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def parity(pred: np.ndarray, target: np.ndarray, title: str = "") -> Any:
    """Predicted vs reference energy (eV), with MAE in the title."""
    pred, target = np.asarray(pred), np.asarray(target)
    mae = float(np.abs(pred - target).mean()) if pred.size else float("nan")
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.scatter(target, pred, s=3, alpha=0.4, lw=0)
    if target.size:
        lo, hi = float(min(target.min(), pred.min())), float(max(target.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("reference H_atomization (eV)")
    ax.set_ylabel("predicted (eV)")
    ax.set_title(f"{title} MAE = {mae:.4f} eV (n = {pred.size})".strip())
    fig.tight_layout()
    return fig


def training_curves(history: list[Any]) -> Any:
    """Train loss, validation MAE and learning rate per epoch."""
    epochs = [h.epoch for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=100)
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
    fig.tight_layout()
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
    fig1, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    if curve:
        n, mae = zip(*curve, strict=True)
        ax.plot(n, mae, "o-")
    ax.set_xlabel("labelled molecules")
    ax.set_ylabel("test MAE (eV)")
    ax.set_yscale("log")
    ax.set_title(f"learning curve (round {round_})")
    fig1.tight_layout()
    fig2 = parity(mean, target, f"round {round_}")
    fig3, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
    if std is not None:
        ax.scatter(std, np.abs(mean - target), s=3, alpha=0.4, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("predicted std (eV)")
    ax.set_ylabel("|error| (eV)")
    fig3.tight_layout()
    return [fig1, fig2, fig3]
