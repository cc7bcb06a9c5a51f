"""Fitting a surrogate: AdamW, warm-up + cosine schedule, early stopping, diagnostics."""

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

from al.data.molecules import MolecularData
from al.models.base import AtomisticModel
from al.models.ensemble import EnsembleModel
from al.training.config import FitConfig

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


@dataclass
class EpochStats:
    """What one epoch measured; flattened into MLflow metrics by :mod:`al.tracking`."""

    epoch: int
    train_loss: float
    val_mae: float
    lr: float
    mol_per_s: float
    data_s: float
    compute_s: float
    weight_norm: dict[str, float] = field(default_factory=dict)
    grad_norm: dict[str, float] = field(default_factory=dict)
    act_norm: dict[str, float] = field(default_factory=dict)


@dataclass
class FitResult:
    history: list[EpochStats]
    best_epoch: int
    best_val_mae: float
    seconds: float
    stopped_early: bool


class _ActivationMonitor:
    """Forward hooks recording the mean per-atom feature norm after each interaction block."""

    def __init__(self, model: AtomisticModel) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.handles = [
            block.register_forward_hook(self._hook(f"block_{k}"))
            for k, block in enumerate(getattr(model, "interactions", []))
        ]

    def _hook(self, name: str) -> Callable:
        def hook(_module: torch.nn.Module, _inp: tuple, out: Tensor | tuple) -> None:
            if not torch.is_grad_enabled():  # only training steps
                return
            h = out[0] if isinstance(out, tuple) else out
            value = h.detach().float().norm(dim=-1).mean()
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1

        return hook

    def pop(self) -> dict[str, float]:
        out = {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict(
    model: AtomisticModel,
    data: MolecularData,
    rows: Tensor,
    batch_size: int = 256,
    amp: bool = True,
    embeddings: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Energies (eV, ``[..., n]``, float64 on CPU) and optionally embeddings ``[..., n, F]``.

    ``n = len(rows)``; an ensemble adds a leading member dimension, a model with ``D > 1``
    outputs a trailing one (``[..., n, D]``). The model is evaluated in whatever train/eval
    mode it is in (MC dropout relies on this).
    """
    device = next(model.parameters()).device
    means, embs = [], []
    for idx in rows.split(batch_size):
        z, pos, batch, _ = data.batch(idx.to(data.ptr.device))
        z, pos, batch = z.to(device), pos.to(device), batch.to(device)
        with _autocast(device, amp):
            energy, emb = model.energy_and_embedding(z, pos, batch, idx.numel())
        means.append(energy.double().cpu())
        if embeddings:
            embs.append(emb.float().cpu())
    if not means:
        return torch.zeros(0, dtype=torch.float64), None
    mean = torch.cat(means, dim=-2 if getattr(model, "n_outputs", 1) > 1 else -1)
    return mean, (torch.cat(embs, dim=-2) if embeddings else None)


def _val_target(y: Tensor) -> tuple[Tensor, Tensor] | None:
    """Validation targets ``[n]`` of the highest fidelity and where they exist (``[n]``
    bool); None when no validation molecule has one."""
    if y.dim() > 1:
        y = y[:, -1]
    present = torch.isfinite(y)
    return (y, present) if bool(present.any()) else None


def fit(
    model: AtomisticModel | EnsembleModel,
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

    Args:
        model: an untrained model, on the device it should train on.
        data: molecules; moved to the model's device once (QM9 fits on any GPU).
        train_rows, val_rows: row indices into ``data``, ``[n_train]`` and ``[n_val]``.
        config: optimiser, schedule and stopping settings.
        on_epoch: called with each epoch's statistics (e.g. to log them).
        profile_dir: if given, a ``torch.profiler`` trace of a few steps is written there.
        sample_weight: loss weight of each training molecule, ``[n_train]``, or per ensemble
            member ``[K, n_train]`` (e.g. bootstrap counts); default all ones.

    An ensemble's members are trained together on the same batches; each member's loss
    only reaches its own weights. Early stopping follows the ensemble mean's MAE.

    A model with ``D > 1`` outputs (fidelities) takes ``data.y`` of shape ``[n_mol, D]``
    with NaN where a molecule has no label of that fidelity: the loss averages over the
    labels present, and early stopping follows the MAE of the last (highest) fidelity.
    """
    device = next(model.parameters()).device
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    data = data.to(device)
    train_rows, val_rows = train_rows.to(device), val_rows.to(device)
    if train_rows.numel() == 0:
        raise ValueError("no training molecules: the labelled set is empty")
    model.fit_reference(data.composition(train_rows), data.y[train_rows])
    y_scale = model.scale.detach().float()  # [] or [D]

    step_model: Callable = model
    if config.compile and device.type == "cuda":
        step_model = torch.compile(model, dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(train_rows.numel() / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    sched: torch.optim.lr_scheduler.LRScheduler
    if total_steps >= 4:
        pct = min(0.05, 5 / config.epochs) if config.epochs > 1 else 0.5
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=config.lr,
            total_steps=total_steps,
            pct_start=max(pct, 2 / total_steps),  # both phases need >= 1 step
            anneal_strategy="cos",
            cycle_momentum=False,
            div_factor=10.0,
            final_div_factor=100.0,
        )
    else:  # too few steps for a warm-up and a decay
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    groups = model.layer_groups()
    monitor = _ActivationMonitor(model)
    gen = torch.Generator().manual_seed(config.seed)
    val_target = _val_target(data.y[val_rows].cpu()) if val_rows.numel() else None
    if sample_weight is not None:
        sample_weight = sample_weight.to(device, torch.float32)

    best_state, best_mae, best_epoch = None, math.inf, -1
    history: list[EpochStats] = []
    start = time.perf_counter()
    stopped_early = False
    profiler = _profiler(profile_dir) if profile_dir is not None else None

    epochs = range(config.epochs)
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(epochs, desc=f"fit {train_rows.numel()} mol", unit="epoch", leave=False)
        epochs = bar
    try:
        for epoch in epochs:
            model.train()
            loss_sum = torch.zeros((), device=device)
            grad_sq = {g: torch.zeros((), device=device) for g in groups}
            n_seen, t_data, t_compute = 0, 0.0, 0.0
            t_epoch = time.perf_counter()
            for idx in iterate_batches(train_rows.numel(), config.batch_size, gen):
                t0 = time.perf_counter()
                rows = train_rows[idx.to(device)]
                z, pos, batch, y = data.batch(rows)
                _sync(device)
                t1 = time.perf_counter()
                with _autocast(device, config.amp):
                    pred = step_model(z, pos, batch, rows.numel())
                labelled = torch.isfinite(y)  # [B] or [B, D]: all True for one output
                # fill missing labels before the subtraction: a NaN there would reach the
                # gradient even when masked afterwards (0 * NaN = NaN)
                y = torch.where(labelled, y, 0.0)
                sq = ((pred.float() - y.float()) / y_scale).square()  # [K?, B, D?]
                sq = torch.where(labelled, sq, 0.0)
                if sample_weight is not None:
                    w = sample_weight[..., idx.to(device)]
                    sq = sq * (w[..., None] if y.dim() > 1 else w)
                loss = sq.sum() / (labelled.sum() * (sq.numel() // labelled.numel())).clamp(min=1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for g, params in groups.items():
                    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
                    if norms:
                        grad_sq[g] += torch.stack(norms).square().sum()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                opt.step()
                sched.step()
                loss_sum += loss.detach() * rows.numel()
                n_seen += rows.numel()
                _sync(device)
                t2 = time.perf_counter()
                t_data += t1 - t0
                t_compute += t2 - t1
                if profiler is not None:
                    profiler.step()
                    if profiler.step_num >= 6:
                        profiler.stop()
                        profiler = None
            elapsed = time.perf_counter() - t_epoch
            n_batches = max(1, math.ceil(n_seen / config.batch_size))
            if val_target is not None:
                model.eval()
                val_pred, _ = predict(model, data, val_rows, amp=config.amp)
                if getattr(model, "n_outputs", 1) > 1:
                    val_pred = val_pred[..., -1]  # [K?, n, D] -> the highest fidelity
                val_pred = val_pred.reshape(-1, val_rows.numel()).mean(0)
                val_mae = float((val_pred - val_target[0])[val_target[1]].abs().mean())
            else:
                val_mae = float("nan")
            with torch.no_grad():
                wnorm = {
                    g: float(torch.stack([p.detach().norm() for p in ps]).square().sum().sqrt())
                    for g, ps in groups.items()
                }
            stats = EpochStats(
                epoch=epoch,
                train_loss=float(loss_sum) / max(n_seen, 1),
                val_mae=val_mae,
                lr=opt.param_groups[0]["lr"],
                mol_per_s=n_seen / max(elapsed, 1e-9),
                data_s=t_data,
                compute_s=t_compute,
                weight_norm=wnorm,
                grad_norm={g: math.sqrt(float(v) / n_batches) for g, v in grad_sq.items()},
                act_norm=monitor.pop(),
            )
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
            if bar is not None:
                bar.set_postfix(val_mae=f"{val_mae:.4f}", loss=f"{stats.train_loss:.4f}")
            score = val_mae if val_target is not None else stats.train_loss
            if score < best_mae:
                best_mae, best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= config.patience:
                stopped_early = True
                log.info("event=early_stop epoch=%d best_epoch=%d", epoch, best_epoch)
                break
    finally:
        monitor.remove()
        if profiler is not None:
            profiler.stop()
        if bar is not None:
            bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        history=history,
        best_epoch=best_epoch,
        best_val_mae=best_mae,
        seconds=time.perf_counter() - start,
        stopped_early=stopped_early,
    )


def _profiler(out_dir: Path) -> torch.profiler.profile:
    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
        on_trace_ready=lambda p: p.export_chrome_trace(str(out_dir / "trace.json")),
        record_shapes=True,
    )
    prof.start()
    return prof
