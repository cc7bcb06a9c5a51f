"""What a fit measures besides its loss: hooks that :func:`~al.training.fit.fit` calls.

A hook only watches: it never changes the weights, the batches or the loss, so a fit with
or without any of them trains the same model. :func:`~al.training.fit.fit` calls every hook
at the same points of each optimizer step (:class:`FitHook`), asks them for their share of
an evaluation's :class:`EpochStats` (:meth:`FitHook.window`) and closes them at the end,
also when the fit fails. :func:`diagnostics` builds the ones a fit runs with: layer
gradient and weight norms, activation norms, timings, and, when asked for, a
``torch.profiler`` trace and a progress bar.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from al import progress


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


class FitHook:
    """Called by :func:`~al.training.fit.fit`; every method does nothing by default.

    Per optimizer step, in this order: :meth:`step_start` (the batch's row indices are
    drawn), :meth:`batch_ready` (the batch is on the device), :meth:`after_backward` (the
    gradients are there, not yet clipped), :meth:`step_end` (the weights are updated). At
    each evaluation, before the validation pass: :meth:`window`; after it and after the
    caller's ``on_epoch``: :meth:`evaluated`. At the end: :meth:`close`.
    """

    def step_start(self) -> None:
        """An optimizer step begins."""

    def batch_ready(self) -> None:
        """The step's molecules are batched on the device."""

    def after_backward(self) -> None:
        """The loss's gradients are in the parameters' ``grad`` (before clipping)."""

    def step_end(self, n_mol: int) -> None:
        """The optimizer stepped on a batch of ``n_mol`` molecules (per member)."""

    def window(self) -> dict[str, Any]:
        """This hook's :class:`EpochStats` fields of the window that ends here."""
        return {}

    def evaluated(self, stats: EpochStats) -> None:
        """The evaluation's statistics; a new window starts after this."""

    def close(self) -> None:
        """The fit ended (or failed): release what the hook holds."""


class Hooks(FitHook):
    """Several hooks called in order, as one; :meth:`window` merges their fields."""

    def __init__(self, hooks: Sequence[FitHook]) -> None:
        self.hooks = list(hooks)

    def step_start(self) -> None:
        for h in self.hooks:
            h.step_start()

    def batch_ready(self) -> None:
        for h in self.hooks:
            h.batch_ready()

    def after_backward(self) -> None:
        for h in self.hooks:
            h.after_backward()

    def step_end(self, n_mol: int) -> None:
        for h in self.hooks:
            h.step_end(n_mol)

    def window(self) -> dict[str, Any]:
        return {k: v for h in self.hooks for k, v in h.window().items()}

    def evaluated(self, stats: EpochStats) -> None:
        for h in self.hooks:
            h.evaluated(stats)

    def close(self) -> None:
        for h in self.hooks:
            h.close()


class LayerNorms(FitHook):
    """Per layer group (``model.layer_groups()``): the RMS over the window's steps of the
    gradient norm (before clipping), and the weight norm at the evaluation."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.groups: dict[str, list[torch.nn.Parameter]] = model.layer_groups()
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.grad_sq = {g: torch.zeros((), device=self.device) for g in self.groups}
        self.steps = 0

    def after_backward(self) -> None:
        for g, params in self.groups.items():
            norms = [p.grad.detach().norm() for p in params if p.grad is not None]
            if norms:
                self.grad_sq[g] += torch.stack(norms).square().sum()
        self.steps += 1

    def window(self) -> dict[str, Any]:
        with torch.no_grad():
            weight = {
                g: float(torch.stack([p.detach().norm() for p in ps]).square().sum().sqrt())
                for g, ps in self.groups.items()
            }
        grad = {g: math.sqrt(float(v) / max(self.steps, 1)) for g, v in self.grad_sq.items()}
        self._reset()
        return {"weight_norm": weight, "grad_norm": grad}


class ActivationNorms(FitHook):
    """Forward hooks recording the mean per-atom feature norm after each interaction block
    (``block_<k>``) in training steps."""

    def __init__(self, model: torch.nn.Module) -> None:
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

    def window(self) -> dict[str, Any]:
        out = {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return {"act_norm": out}

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer(FitHook):
    """Seconds spent batching (``data_s``) and stepping (``compute_s``), and molecules per
    second over the window (``mol_per_s``, up to the evaluation's validation pass)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.data_s = self.compute_s = 0.0
        self.n_seen = 0
        self.t0 = self.t_step = self.t_batch = time.perf_counter()

    def step_start(self) -> None:
        self.t_step = time.perf_counter()

    def batch_ready(self) -> None:
        _sync(self.device)
        self.t_batch = time.perf_counter()
        self.data_s += self.t_batch - self.t_step

    def step_end(self, n_mol: int) -> None:
        _sync(self.device)
        self.compute_s += time.perf_counter() - self.t_batch
        self.n_seen += n_mol

    def window(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t0
        return {
            "mol_per_s": self.n_seen / max(elapsed, 1e-9),
            "data_s": self.data_s,
            "compute_s": self.compute_s,
        }

    def evaluated(self, stats: EpochStats) -> None:
        self._reset()


class Profile(FitHook):
    """A ``torch.profiler`` trace of the first steps (1 skipped, 1 warm-up, 3 recorded),
    written to ``out_dir/trace.json``."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler: torch.profiler.profile | None = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
            on_trace_ready=lambda p: p.export_chrome_trace(str(out_dir / "trace.json")),
            record_shapes=True,
        )
        self.profiler.start()

    def step_end(self, n_mol: int) -> None:
        if self.profiler is None:
            return
        self.profiler.step()
        if self.profiler.step_num >= 6:
            self.close()

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None


class ProgressBar(FitHook):
    """A bar of the fit's optimizer steps with the last validation MAE and training loss."""

    def __init__(self, total: int, n_train: int) -> None:
        self.bar = progress.bar(total=total, desc=f"fit {n_train} mol", unit="step", leave=False)

    def step_end(self, n_mol: int) -> None:
        self.bar.update(1)

    def evaluated(self, stats: EpochStats) -> None:
        self.bar.set_postfix(val_mae=f"{stats.val_mae:.4f}", loss=f"{stats.train_loss:.4f}")

    def close(self) -> None:
        self.bar.close()


def diagnostics(
    model: torch.nn.Module,
    device: torch.device,
    total: int,
    n_train: int,
    show_progress: bool = False,
    profile_dir: Path | None = None,
) -> Hooks:
    """The hooks of a fit of ``total`` steps on ``n_train`` molecules: layer and activation
    norms and timings always; a profiler trace into ``profile_dir`` when given; a bar when
    ``show_progress`` and :func:`al.progress.shown` (on a terminal only: logs stay clean)."""
    hooks: list[FitHook] = [LayerNorms(model, device), ActivationNorms(model), Timer(device)]
    if profile_dir is not None:
        hooks.append(Profile(profile_dir))
    if progress.shown(show_progress):
        hooks.append(ProgressBar(total, n_train))
    return Hooks(hooks)
