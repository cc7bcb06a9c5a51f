"""Fitting a surrogate: AdamW, warm-up + cosine schedule, early stopping; predicting."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from al.data.molecules import MolecularData
from al.models.base import AtomisticModel
from al.models.ensemble import EnsembleModel
from al.models.shallow import ShallowEnsembleModel
from al.training.config import FitConfig, step_budget
from al.training.hooks import EpochStats, FitHook, diagnostics
from al.training.steps import TrainStep, train_step

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(device)


def iterate_batches(
    n: int, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[Tensor]:
    """Index batches over ``range(n)``: shuffled with ``generator``, in order without."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def member_batches(
    n: int, batch_size: int, members: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """Endless index batches ``[members, b]`` over ``range(n)``, epoch after epoch.

    Every epoch each member draws its own permutation, so ensemble members see the data in
    independent orders; each member still sees every row once per epoch. With one member
    the batches are those of :func:`iterate_batches` with the same generator.
    """
    if n < 1:
        raise ValueError("no rows to draw batches from")
    while True:
        perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(members)])
        yield from perms.split(batch_size, dim=1)


@dataclass
class FitResult:
    """The outcome of :func:`fit`.

    Attributes:
        best_epoch: the evaluation whose weights were kept; ``best_step`` its step.
        steps: optimizer steps taken; ``step_budget`` the steps the schedule was sized for.
        val_rows: the validation rows used, ``[n_val]``.
        std_scale: the calibration scale a surrogate fitted afterwards (1 for a bare fit).
    """

    history: list[EpochStats]
    best_epoch: int
    best_val_mae: float
    seconds: float
    stopped_early: bool
    steps: int = 0
    step_budget: int = 0
    best_step: int = 0
    n_train: int = 0
    val_rows: Tensor | None = None
    std_scale: float = 1.0
    #: the fit continued from earlier weights with a shorter schedule (a warm start)
    warm: bool = False


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: AtomisticModel,
    data: MolecularData,
    rows: Tensor,
    batch_size: int = 256,
    amp: bool = True,
    embeddings: bool = False,
    counter: tqdm | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Energies (eV, ``[..., n]``, float64 on CPU) and optionally embeddings ``[..., n, F]``.

    ``n = len(rows)``; an ensemble adds a leading member dimension, a model with ``D > 1``
    outputs a trailing one (``[..., n, D]``). The model is evaluated in whatever train/eval
    mode it is in (MC dropout relies on this). ``counter`` (a bar) advances by the
    molecules of each batch.
    """
    device = next(model.parameters()).device
    # Molecules are batched in order of size: the models pad every molecule of a batch to
    # the largest one (dense per-molecule blocks), so batches of random sizes spend most of
    # their pair computations on padding (2x slower scoring on CPU, measured with
    # benchmarks/scoring.py). The results are put back in the order of ``rows``.
    rows = rows.to(data.ptr.device)
    order = torch.argsort(data.ptr[rows + 1] - data.ptr[rows], stable=True)
    means, embs = [], []
    for idx in rows[order].split(batch_size):
        z, pos, batch, _ = data.batch(idx)
        z, pos, batch = z.to(device), pos.to(device), batch.to(device)
        with _autocast(device, amp):
            energy, emb = model.energy_and_embedding(z, pos, batch, idx.numel())
        means.append(energy.double().cpu())
        if embeddings:
            embs.append(emb.float().cpu())
        if counter is not None:
            counter.update(idx.numel())
    if not means:
        return torch.zeros(0, dtype=torch.float64), None
    back = torch.argsort(order).cpu()
    dim = -2 if getattr(model, "n_outputs", 1) > 1 else -1
    mean = torch.cat(means, dim=dim).index_select(dim, back)
    return mean, (torch.cat(embs, dim=-2).index_select(-2, back) if embeddings else None)


def _val_target(y: Tensor) -> tuple[Tensor, Tensor] | None:
    """Validation targets ``[n]`` of the highest fidelity and where they exist (``[n]``
    bool); None when no validation molecule has one."""
    if y.dim() > 1:
        y = y[:, -1]
    present = torch.isfinite(y)
    return (y, present) if bool(present.any()) else None


def _schedule(
    opt: torch.optim.Optimizer, lr: float, total: int, per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up (5 % of the steps, at most five epochs' worth) then cosine decay over
    ``total`` steps; constant when there are too few steps for both phases."""
    if total < 4:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    pct = min(0.05, 5 * per_epoch / total) if total > per_epoch else 0.5
    return torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=lr,
        total_steps=total,
        pct_start=max(pct, 2 / total),  # both phases need >= 1 step
        anneal_strategy="cos",
        cycle_momentum=False,
        div_factor=10.0,
        final_div_factor=100.0,
    )


def fit(
    model: AtomisticModel | EnsembleModel | ShallowEnsembleModel,
    data: MolecularData,
    train_rows: Tensor,
    val_rows: Tensor,
    config: FitConfig,
    on_epoch: Callable[[EpochStats], None] | None = None,
    profile_dir: Path | None = None,
    sample_weight: Tensor | None = None,
) -> FitResult:
    """Train ``model`` on ``train_rows`` of ``data``, early-stopping on ``val_rows`` MAE.

    The model's reference energies are fitted on the training molecules first; the best
    weights (lowest validation MAE) are restored at the end.

    The fit runs :func:`~al.training.config.step_budget` optimizer steps (epochs capped by
    ``max_steps``, floored by ``min_steps``) on a warm-up + cosine schedule sized for them.
    Validation runs every ``eval_every`` steps (default once per epoch) and after the last
    step; early stopping ends the fit after ``patience`` evaluations without improvement,
    but never before ``min_steps``. The rows are used as given: the validation split
    (``val_fraction``, ``val_min``) is :func:`~al.training.split.split_validation`'s.

    What a step does depends on the model's kind, and is chosen once
    (:func:`~al.training.steps.train_step`): a deep ensemble's members are trained in one
    pass, each on its own batch order, with its own loss and gradient-norm clipping; a
    shallow ensemble trains on its heads' MSEs, then on their Gaussian NLL, and its best
    weights are looked for only after that warm-up. Early stopping follows the MAE of the
    mean over members or heads, of the last (highest) fidelity of a model with ``D > 1``
    outputs (``data.y`` ``[n_mol, D]``, NaN where a molecule has no label of a fidelity).
    Diagnostics are hooks (:func:`~al.training.hooks.diagnostics`).

    Args:
        model: an untrained model, on the device it should train on.
        data: molecules; moved to the model's device once (QM9 fits on any GPU).
        train_rows, val_rows: row indices into ``data``, ``[n_train]`` and ``[n_val]``.
        config: optimiser, schedule and stopping settings.
        on_epoch: called with each evaluation's statistics (e.g. to log them).
        profile_dir: if given, a ``torch.profiler`` trace of a few steps is written there.
        sample_weight: loss weight of each training molecule, ``[n_train]``, or per ensemble
            member ``[K, n_train]`` (e.g. bootstrap counts); default all ones.
    """
    device = next(model.parameters()).device
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    data = data.to(device)
    train_rows, val_rows = train_rows.to(device), val_rows.to(device)
    if train_rows.numel() == 0:
        raise ValueError("no training molecules: the labelled set is empty")
    if sample_weight is not None:
        sample_weight = sample_weight.to(device, torch.float32)
    n_train = train_rows.numel()
    model.fit_reference(
        data.composition(train_rows), data.y[train_rows], config.composition_reference
    )
    total = step_budget(config, n_train)
    trainer = train_step(model, data, train_rows, config, sample_weight, total)
    start = time.perf_counter()
    hooks = diagnostics(model, device, total, n_train, config.progress, profile_dir)
    try:
        run = _train(trainer, val_rows, config, total, hooks, on_epoch)
    finally:
        hooks.close()
    if run.best.state is not None:
        model.load_state_dict(run.best.state)
    model.eval()
    return FitResult(
        history=run.history,
        best_epoch=run.best.epoch,
        best_val_mae=run.best.score,
        seconds=time.perf_counter() - start,
        stopped_early=run.stopped_early,
        steps=run.steps,
        step_budget=total,
        best_step=run.best.step,
        n_train=n_train,
        val_rows=val_rows.cpu(),
    )


@dataclass
class _Best:
    """The best evaluation so far (lowest validation MAE, or training loss without
    validation targets) and a copy of its weights."""

    state: dict[str, Tensor] | None = None
    score: float = math.inf
    epoch: int = -1
    step: int = 0


@dataclass
class _Run:
    """How a fit's training loop ended."""

    history: list[EpochStats] = field(default_factory=list)
    best: _Best = field(default_factory=_Best)
    steps: int = 0
    stopped_early: bool = False


def _train(
    trainer: TrainStep,
    val_rows: Tensor,
    config: FitConfig,
    total: int,
    hooks: FitHook,
    on_epoch: Callable[[EpochStats], None] | None,
) -> _Run:
    """The training loop: ``total`` optimizer steps of ``trainer`` on AdamW with the
    warm-up + cosine schedule, an evaluation every ``eval_every`` steps and after the last,
    early stopping after ``patience`` evaluations without improvement."""
    model, data = trainer.model, trainer.data
    n_train = trainer.train_rows.numel()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(n_train / config.batch_size)
    sched = _schedule(opt, config.lr, total, per_epoch)
    eval_every = config.eval_every or per_epoch
    batches = _size_sorted_batches(trainer, config)
    val_target = _val_target(data.y[val_rows].cpu()) if val_rows.numel() else None
    loss_sum, n_seen = torch.zeros((), device=val_rows.device), 0  # the window's training loss
    run = _Run()
    model.train()
    while run.steps < total:
        hooks.step_start()
        batch = trainer.batch(next(batches))
        hooks.batch_ready()
        with _autocast(val_rows.device, config.amp):
            pred = trainer.forward(batch)
        loss, report = trainer.loss(pred, batch, run.steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        hooks.after_backward()
        if config.grad_clip > 0:
            trainer.clip_(config.grad_clip)
        opt.step()
        sched.step()
        run.steps += 1
        loss_sum += report * batch.size
        n_seen += batch.size
        hooks.step_end(batch.size)
        if run.steps % eval_every and run.steps < total:
            continue
        window = hooks.window()  # the diagnostics of the window, before the validation pass
        stats = EpochStats(
            epoch=len(run.history),
            train_loss=float(loss_sum) / max(n_seen, 1),
            val_mae=_val_mae(model, data, val_rows, val_target, config.amp),
            lr=opt.param_groups[0]["lr"],
            step=run.steps,
            **window,
        )
        run.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        hooks.evaluated(stats)
        loss_sum, n_seen = torch.zeros((), device=val_rows.device), 0
        model.train()
        if run.steps >= trainer.best_from and _stops(model, run, stats, val_target, config, total):
            log.info("event=early_stop step=%d best_step=%d", run.steps, run.best.step)
            run.stopped_early = True
            break
    return run


def _stops(
    model: torch.nn.Module,
    run: _Run,
    stats: EpochStats,
    val_target: tuple[Tensor, Tensor] | None,
    config: FitConfig,
    total: int,
) -> bool:
    """Keep the weights of an evaluation better than the best so far; whether ``patience``
    evaluations passed without one (never before ``min_steps`` nor at the last step, which
    ends the fit anyway)."""
    score = stats.val_mae if val_target is not None else stats.train_loss
    best = run.best
    if score < best.score:
        best.score, best.epoch, best.step = score, stats.epoch, run.steps
        best.state = copy.deepcopy(model.state_dict())
        return False
    return stats.epoch - best.epoch >= config.patience and config.min_steps <= run.steps < total


def _size_sorted_batches(trainer: TrainStep, config: FitConfig) -> Iterator[Tensor]:
    """Endless positions ``[members, b]`` in the training rows (:func:`member_batches`,
    seeded with ``config.seed``), each member's batch in order of molecule size.

    The same batch (the loss is a mean over its molecules), which the models then cut into
    dense blocks of similar size (:class:`al.models.geometry.BatchGeometry`) instead of
    padding all to the largest.
    """
    rows = trainer.train_rows
    sizes = trainer.data.n_atoms[rows]
    gen = torch.Generator().manual_seed(config.seed)
    for idx in member_batches(rows.numel(), config.batch_size, trainer.members, gen):
        idx = idx.to(rows.device)
        yield torch.gather(idx, 1, torch.argsort(sizes[idx], dim=1, stable=True))


def _val_mae(
    model: torch.nn.Module,
    data: MolecularData,
    val_rows: Tensor,
    val_target: tuple[Tensor, Tensor] | None,
    amp: bool,
) -> float:
    """MAE (eV) of the model's mean energy (over members or heads, highest fidelity) on the
    validation rows; NaN without validation targets."""
    if val_target is None:
        return float("nan")
    model.eval()
    val_pred, _ = predict(model, data, val_rows, amp=amp)
    if getattr(model, "n_outputs", 1) > 1:
        val_pred = val_pred[..., -1]  # [K?, n, D] -> the highest fidelity
    val_pred = val_pred.reshape(-1, val_rows.numel()).mean(0)
    return float((val_pred - val_target[0])[val_target[1]].abs().mean())
