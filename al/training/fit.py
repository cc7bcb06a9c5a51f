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
from tqdm.auto import tqdm

from al import progress
from al.data.molecules import MolecularData
from al.models.base import AtomisticModel
from al.models.ensemble import EnsembleModel
from al.models.shallow import ShallowEnsembleModel
from al.training import losses
from al.training.config import FitConfig, step_budget, validation_size

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
class EpochStats:
    """What one evaluation window measured (the steps since the previous validation, one
    epoch by default); flattened into MLflow metrics by :mod:`al.tracking`.

    ``epoch`` counts evaluations (0, 1, ...; the MLflow step), ``step`` the optimizer steps
    done so far. Times and throughput are of the window.
    """

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
    step: int = 0


@dataclass
class FitResult:
    """The outcome of :func:`fit`.

    Attributes:
        best_epoch: the evaluation whose weights were kept; ``best_step`` its step.
        steps: optimizer steps taken; ``step_budget`` the steps the schedule was sized for.
        val_rows: the validation rows used (after the ``val_min`` floor), ``[n_val]``.
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


def _top_up_validation(
    train_rows: Tensor, val_rows: Tensor, config: FitConfig
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Move seeded random training rows to validation until it has
    :func:`~al.training.config.validation_size` rows (only when ``val_min`` asks for more
    than the caller held out, and only when the caller held out any).

    Returns the new training and validation rows and the positions of the kept training
    rows in the old ones (``[n_train']``, None when nothing moved).
    """
    n_val = val_rows.numel()
    if n_val == 0 or config.val_min <= n_val:
        return train_rows, val_rows, None
    extra = validation_size(config, train_rows.numel() + n_val) - n_val
    if extra <= 0:
        return train_rows, val_rows, None
    gen = torch.Generator().manual_seed(config.seed + 7919)
    order = torch.randperm(train_rows.numel(), generator=gen).to(train_rows.device)
    log.info("event=validation_floor n_val=%d moved=%d", n_val, extra)
    keep = order[extra:]
    return train_rows[keep], torch.cat([val_rows, train_rows[order[:extra]]]), keep


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
    but never before ``min_steps``. When ``val_min`` asks for more validation molecules than
    ``val_rows`` holds, seeded random training rows are moved there first
    (``FitResult.val_rows`` are the ones used).

    Args:
        model: an untrained model, on the device it should train on.
        data: molecules; moved to the model's device once (QM9 fits on any GPU).
        train_rows, val_rows: row indices into ``data``, ``[n_train]`` and ``[n_val]``.
        config: optimiser, schedule and stopping settings.
        on_epoch: called with each evaluation's statistics (e.g. to log them).
        profile_dir: if given, a ``torch.profiler`` trace of a few steps is written there.
        sample_weight: loss weight of each training molecule, ``[n_train]``, or per ensemble
            member ``[K, n_train]`` (e.g. bootstrap counts); default all ones.

    A deep ensemble's members are trained in one pass, each on its own batch order (own
    permutation every epoch), with its own loss and its own gradient-norm clipping. Early
    stopping follows the ensemble mean's MAE.

    A shallow ensemble (:class:`~al.models.shallow.ShallowEnsembleModel`) is trained on the
    mean of its heads' MSEs for the first ``nll_warmup`` share of the steps, then on the
    Gaussian NLL of the heads' mean and variance (:func:`~al.training.losses.ensemble_nll`);
    the best weights are looked for only after the warm-up.

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
    train_rows, val_rows, kept = _top_up_validation(train_rows, val_rows, config)
    if sample_weight is not None:
        sample_weight = sample_weight.to(device, torch.float32)
        if kept is not None:
            sample_weight = sample_weight[..., kept]
    n_train = train_rows.numel()
    model.fit_reference(data.composition(train_rows), data.y[train_rows])
    y_scale = model.scale.detach().float()  # [] or [D]

    members = model.size if isinstance(model, EnsembleModel) else 1
    shallow = isinstance(model, ShallowEnsembleModel)
    step_model: Callable = model
    if config.compile and device.type == "cuda" and members == 1:
        step_model = torch.compile(model, dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(n_train / config.batch_size)
    total = step_budget(config, n_train)
    sched = _schedule(opt, config.lr, total, per_epoch)
    eval_every = config.eval_every or per_epoch
    nll_from = round(config.nll_warmup * total) if shallow else 0
    track_from = min(nll_from, total)  # best weights are looked for from this step on
    groups = model.layer_groups()
    monitor = _ActivationMonitor(model)
    batches = member_batches(
        n_train, config.batch_size, members, torch.Generator().manual_seed(config.seed)
    )
    # Each batch's molecules in order of size: the same batch (the loss is a mean over its
    # molecules), which the models then cut into dense blocks of similar size
    # (al.models.geometry.BatchGeometry) instead of padding all to the largest.
    sizes = data.n_atoms[train_rows]
    val_target = _val_target(data.y[val_rows].cpu()) if val_rows.numel() else None

    best_state, best_mae, best_epoch, best_step = None, math.inf, -1, 0
    history: list[EpochStats] = []
    start = time.perf_counter()
    stopped_early = False
    profiler = _profiler(profile_dir) if profile_dir is not None else None
    bar = None
    if progress.shown(config.progress):  # on a terminal only: logs stay clean
        bar = progress.bar(total=total, desc=f"fit {n_train} mol", unit="step", leave=False)

    def window() -> dict:
        return {
            "loss": torch.zeros((), device=device),
            "grad_sq": {g: torch.zeros((), device=device) for g in groups},
            "n_seen": 0, "steps": 0, "t_data": 0.0, "t_compute": 0.0,
            "t0": time.perf_counter(),
        }  # fmt: skip

    win = window()
    step = 0
    try:
        model.train()
        while step < total:
            idx = next(batches).to(device)  # [members, b]
            idx = torch.gather(idx, 1, torch.argsort(sizes[idx], dim=1, stable=True))
            t0 = time.perf_counter()
            if members > 1:
                parts = [data.batch(train_rows[i]) for i in idx]
                y = torch.stack([p[3] for p in parts])  # [K, b(, D)]
                _sync(device)
                t1 = time.perf_counter()
                with _autocast(device, config.amp):
                    pred = model.forward_members([p[:3] for p in parts], idx.shape[1])
                weight = None
                if sample_weight is not None:
                    weight = (
                        torch.gather(sample_weight, 1, idx)
                        if sample_weight.dim() == 2
                        else sample_weight[idx]
                    )
                loss = losses.member_mse(pred.float() / y_scale, y.float() / y_scale, weight)
                report_loss = loss.detach() / members
            else:
                rows = train_rows[idx[0]]
                z, pos, batch, y = data.batch(rows)
                _sync(device)
                t1 = time.perf_counter()
                with _autocast(device, config.amp):
                    pred = step_model(z, pos, batch, rows.numel())
                weight = None if sample_weight is None else sample_weight[..., idx[0]]
                pred, y = pred.float() / y_scale, y.float() / y_scale
                if shallow and step >= nll_from:
                    loss = losses.ensemble_nll(pred, y, weight)
                elif shallow:  # warm-up: each head fits the targets on its own
                    w = None if weight is None else weight.expand(pred.shape[:2])
                    loss = losses.member_mse(pred, y.expand_as(pred), w) / pred.shape[0]
                else:
                    loss = losses.mse(pred, y, weight)
                report_loss = loss.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for g, params in groups.items():
                norms = [p.grad.detach().norm() for p in params if p.grad is not None]
                if norms:
                    win["grad_sq"][g] += torch.stack(norms).square().sum()
            if config.grad_clip > 0:
                if members > 1:
                    model.clip_grad_norms_(config.grad_clip)
                else:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            step += 1
            b = idx.shape[1]
            win["loss"] += report_loss * b
            win["n_seen"] += b
            win["steps"] += 1
            _sync(device)
            t2 = time.perf_counter()
            win["t_data"] += t1 - t0
            win["t_compute"] += t2 - t1
            if bar is not None:
                bar.update(1)
            if profiler is not None:
                profiler.step()
                if profiler.step_num >= 6:
                    profiler.stop()
                    profiler = None
            if step % eval_every and step < total:
                continue

            # --- evaluation ---------------------------------------------------------------
            elapsed = time.perf_counter() - win["t0"]
            val_mae = _val_mae(model, data, val_rows, val_target, config.amp)
            with torch.no_grad():
                wnorm = {
                    g: float(torch.stack([p.detach().norm() for p in ps]).square().sum().sqrt())
                    for g, ps in groups.items()
                }
            stats = EpochStats(
                epoch=len(history),
                train_loss=float(win["loss"]) / max(win["n_seen"], 1),
                val_mae=val_mae,
                lr=opt.param_groups[0]["lr"],
                mol_per_s=win["n_seen"] / max(elapsed, 1e-9),
                data_s=win["t_data"],
                compute_s=win["t_compute"],
                weight_norm=wnorm,
                grad_norm={
                    g: math.sqrt(float(v) / max(win["steps"], 1)) for g, v in win["grad_sq"].items()
                },
                act_norm=monitor.pop(),
                step=step,
            )
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
            if bar is not None:
                bar.set_postfix(val_mae=f"{val_mae:.4f}", loss=f"{stats.train_loss:.4f}")
            win = window()
            model.train()
            if step < track_from:
                continue
            score = val_mae if val_target is not None else stats.train_loss
            if score < best_mae:
                best_mae, best_epoch, best_step = score, stats.epoch, step
                best_state = copy.deepcopy(model.state_dict())
            elif (
                stats.epoch - best_epoch >= config.patience
                and config.min_steps <= step < total  # the last step ends the fit anyway
            ):
                stopped_early = True
                log.info("event=early_stop step=%d best_step=%d", step, best_step)
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
        steps=step,
        step_budget=total,
        best_step=best_step,
        n_train=n_train,
        val_rows=val_rows.cpu(),
    )


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
