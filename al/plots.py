"""Figures logged with runs (matplotlib, headless)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def parity(
    pred: np.ndarray, target: np.ndarray, title: str = "", unit: str = "eV",
    quantity: str = "H_atomization",
) -> Any:  # fmt: skip
    """Predicted vs reference ``quantity`` (in ``unit``), with MAE in the title."""
    pred, target = np.asarray(pred), np.asarray(target)
    mae = float(np.abs(pred - target).mean()) if pred.size else float("nan")
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110, layout="tight")
    ax.scatter(target, pred, s=3, alpha=0.4, lw=0)
    if target.size:
        lo, hi = float(min(target.min(), pred.min())), float(max(target.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"reference {quantity} ({unit})")
    ax.set_ylabel(f"predicted ({unit})")
    ax.set_title(f"{title} MAE = {mae:.4f} {unit} (n = {pred.size})".strip())
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
    coverage: tuple[np.ndarray, np.ndarray] | None = None,
    evaluated_on: str = "test set",
    unit: str = "eV",
    quantity: str = "H_atomization",
) -> list[Any]:
    """Learning curve, parity, std-vs-error and calibration figures.

    Args:
        curve: ``(n_labelled, test MAE)`` per round so far.
        mean, std: the prediction on the test set, ``[n]`` each (``std`` may be None).
        target: the reference energies, ``[n]``.
        coverage: expected and observed coverage of central intervals, ``[n_levels]``
            each (:func:`al.training.metrics.calibration_curve`); None without a std.
        evaluated_on: what the figures are measured on (``test set``, or a pool
            campaign's ``held-out labelled molecules``), as the axes and titles say.
        unit, quantity: the labels' unit and name (a pool campaign's ``unit`` and
            ``target``), as the axes say.
    """
    short = "test" if evaluated_on == "test set" else "held-out"
    fig1, ax = plt.subplots(figsize=(5, 3.6), dpi=100, layout="tight")
    if curve:
        n, mae = zip(*curve, strict=True)
        ax.plot(n, mae, "o-")
    ax.set_xlabel("labelled molecules")
    ax.set_ylabel(f"{short} MAE ({unit})")
    ax.set_yscale("log")
    ax.set_title(f"learning curve (round {round_})")
    fig2 = parity(mean, target, f"round {round_}", unit, quantity)
    fig3, ax = plt.subplots(figsize=(4.5, 4), dpi=100, layout="tight")
    err = np.abs(np.asarray(mean) - np.asarray(target))
    if std is not None:
        _std_vs_error(ax, np.asarray(std), err, None, "")
    ax.set_xlabel(f"predicted std ({unit})")
    ax.set_ylabel(f"|error| ({unit})")
    panels = [] if std is None or coverage is None else [(f"round {round_}", *coverage, std, err)]
    title = f"calibration on the {evaluated_on} (round {round_})"
    fig4 = calibration_figure(panels, {}, title, unit, short)
    return [fig1, fig2, fig3, fig4]


def _std_vs_error(
    ax: Any, std: np.ndarray, err: np.ndarray, colour: str | None, label: str
) -> None:
    """|error| against predicted std (``[n]`` each), log-log, with the line |err| = std."""
    ok = (std > 0) & (err > 0) & np.isfinite(std) & np.isfinite(err)
    ax.scatter(std[ok], err[ok], s=3, alpha=0.4, lw=0, color=colour, label=label or None)
    if ok.any():
        lo = float(min(std[ok].min(), err[ok].min()))
        hi = float(max(std[ok].max(), err[ok].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")


def calibration_figure(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    colours: Mapping[str, str],
    title: str,
    unit: str = "eV",
    measured_on: str = "test",
) -> Any:
    """Two panels: observed against expected coverage of central Gaussian intervals (a
    calibrated model lies on the diagonal, below it the std is too small), and |error|
    against predicted std with the identity line |err| = std, log-log.

    ``panels``: ``(label, expected, observed, std, err)`` per model or arm, the first two
    ``[n_levels]``, the others ``[n]``; ``colours``: label -> colour (default: the cycle).
    Returns the figure.
    """
    fig, (cov, scatter) = plt.subplots(1, 2, figsize=(9, 4), dpi=100, layout="constrained")
    cov.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    lows, highs = [], []
    for label, expected, observed, std, err in panels:
        (line,) = cov.plot(expected, observed, lw=1.5, color=colours.get(label), label=label)
        std, err = np.asarray(std, dtype=float), np.asarray(err, dtype=float)
        ok = (std > 0) & (err > 0) & np.isfinite(std) & np.isfinite(err)
        scatter.scatter(std[ok], err[ok], s=3, alpha=0.35, lw=0, color=line.get_color(),
                        label=label)  # fmt: skip
        if ok.any():
            lows.append(min(std[ok].min(), err[ok].min()))
            highs.append(max(std[ok].max(), err[ok].max()))
    if lows:
        lo, hi = float(min(lows)), float(max(highs))
        scatter.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="|err| = std")
        scatter.set_xscale("log")
        scatter.set_yscale("log")
    else:
        scatter.text(0.5, 0.5, "no predicted std", transform=scatter.transAxes, ha="center")
    cov.set_xlim(0, 1)
    cov.set_ylim(0, 1)
    cov.set_xlabel("expected coverage of the central interval")
    cov.set_ylabel(f"observed coverage ({measured_on} set)")
    scatter.set_xlabel(f"predicted std ({unit})")
    scatter.set_ylabel(f"|error| ({unit})")
    for ax in (cov, scatter):
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, markerscale=3)
    fig.suptitle(title, fontsize=10)
    return fig


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


# --- arm colours and the uncertainty figures of the comparison report -------------------------
def arm_colours(arms: Iterable[str]) -> dict[str, str]:
    """A fixed colour per arm name, the same in every figure of a report: the sorted unique
    names take the colours of ``tab10`` in turn (``tab20`` beyond 10 arms, cycling beyond
    20), so an arm's colour does not depend on which arms a figure shows."""
    names = sorted({str(a) for a in arms})
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    n = cmap.N
    return {a: matplotlib.colors.to_hex(cmap(i % n)) for i, a in enumerate(names)}


def colour_cycle(colours: Sequence[str]) -> Any:
    """A context in which new axes draw their lines in ``colours``, in order (a plot that
    draws one line per arm in sorted order then gives each arm its colour)."""
    from cycler import cycler

    return matplotlib.rc_context({"axes.prop_cycle": cycler(color=list(colours))})


def _panels(n: int, width: float = 3.4, height: float = 3.1) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels, at most 3 a row; the unused axes are hidden."""
    ncols = max(1, min(n, 3))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), dpi=110, layout="constrained",
        squeeze=False,
    )  # fmt: skip
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_reliability(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
    colours: Mapping[str, str],
    title: str,
    path: Path,
) -> Path:
    """Reliability diagram, one panel per arm: RMSE of the test errors against the root
    mean predicted variance (RMV) of equal-count bins of predicted std, log-log, with the
    y = x line of a calibrated model; PNG at ``path``.

    ``panels``: ``(arm, rmv, rmse)`` per arm, ``rmv`` and ``rmse`` ``[n_bins]`` each (as
    :func:`al.report.uncertainty.reliability_bins` gives them); ``colours``: arm -> colour.
    """
    fig, axes = _panels(len(panels))
    for ax, (arm, rmv, rmse) in zip(axes, panels, strict=True):
        x, y = np.asarray(rmv, dtype=float), np.asarray(rmse, dtype=float)
        ok = (x > 0) & (y > 0)
        if ok.any():
            lo, hi = float(min(x[ok].min(), y[ok].min())), float(max(x[ok].max(), y[ok].max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
            ax.plot(x[ok], y[ok], "o-", ms=3, color=colours.get(arm), label=arm)
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):  # decades only: minor labels overlap
                axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no bins", transform=ax.transAxes, ha="center", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("RMV: root mean predicted variance (eV)", fontsize=8)
        ax.set_ylabel("RMSE of the errors (eV)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_z_histograms(
    panels: Sequence[tuple[str, np.ndarray]],
    colours: Mapping[str, str],
    title: str,
    path: Path,
    limit: float = 5.0,
) -> Path:
    """Histogram (density) of the z-scores ``(target - mean) / std``, one panel per arm,
    with the standard normal density overlaid; PNG at ``path``.

    ``panels``: ``(arm, z)`` per arm, ``z`` ``[n]``; values beyond ``±limit`` are counted
    in the panel's text, not drawn. ``colours``: arm -> colour.
    """
    fig, axes = _panels(len(panels))
    grid = np.linspace(-limit, limit, 201)
    normal = np.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi)
    for ax, (arm, z) in zip(axes, panels, strict=True):
        z = np.asarray(z, dtype=float)
        z = z[np.isfinite(z)]
        inside = z[np.abs(z) <= limit]
        # densities of all z: the bars of the drawn part sum to the share within ±limit
        weights = np.full(inside.size, 1.0 / max(z.size, 1))
        width = 2 * limit / 50
        ax.hist(inside, bins=np.linspace(-limit, limit, 51), weights=weights / width,
                color=colours.get(arm), alpha=0.6, label=arm)  # fmt: skip
        ax.plot(grid, normal, "k-", lw=1, label="N(0, 1)")
        if z.size:
            sd = float(z.std(ddof=1)) if z.size > 1 else math.nan
            text = f"n = {z.size}\nmean {z.mean():.2f}, sd {sd:.2f}"
            if z.size > inside.size:
                text += f"\n{z.size - inside.size} beyond ±{limit:g}"
            ax.text(0.02, 0.97, text, transform=ax.transAxes, va="top", fontsize=7)
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("z = (target − mean) / std", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    plt.close(fig)
    return path
