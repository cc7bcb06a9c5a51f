"""How a surrogate is trained (keys of ``train``, ``al_loop``, ``pretrain``, ``hpo``).

A fit is sized in optimizer steps: the budget is ``epochs`` x steps per epoch, capped by
``max_steps`` and floored by ``min_steps`` (:func:`step_budget`), so a small labelled set
still gets enough updates. Validation is evaluated every ``eval_every`` steps (default: once
per epoch) and early stopping counts ``patience`` evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from al.config import option
from al.models.config import ModelConfig

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class FitConfig:
    """How a surrogate is trained."""

    #: The help section of these keys on the command line.
    GROUP = "training"

    epochs: int = option(150, "maximum epochs (an upper bound; max_steps may cap lower)", min=1)
    max_steps: int = option(0, "maximum optimizer steps (0 = only the epochs cap)", min=0)
    min_steps: int = option(
        0, "optimizer steps every fit gets at least, whatever the data size; early stopping "
        "waits for them too (0 = no floor)", min=0,
    )  # fmt: skip
    eval_every: int = option(
        0, "optimizer steps between validation evaluations (0 = once per epoch)", min=0
    )
    batch_size: int = option(64, "molecules per batch", min=1)
    lr: float = option(1e-3, "peak learning rate (AdamW; warm-up + cosine over the steps)", min=0.0)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0)
    patience: int = option(30, "early stopping: validation evaluations without improvement", min=1)
    grad_clip: float = option(10.0, "gradient norm clip, per ensemble member (0 = off)", min=0.0)
    val_fraction: float = option(0.1, "share of the labelled set held out", min=0.0, max=0.5)
    val_min: int = option(
        0, "validation floor in molecules: at least this many are held out, at most "
        "val_max_fraction of the labelled set (0 = off)", min=0,
    )  # fmt: skip
    val_max_fraction: float = option(
        0.25, "cap of the validation share when val_min raises it", min=0.0, max=0.5
    )
    nll_warmup: float = option(
        0.25, "shallow ensemble: share of the steps in which each head fits the targets "
        "(MSE) before the Gaussian NLL of the heads' mean and variance", min=0.0, max=1.0,
    )  # fmt: skip
    composition_reference: bool = option(
        True, "per-element reference energies fitted on each fit's training labels (the "
        "composition term of an extensive energy); false for a scalar that does not grow "
        "with the molecule's atoms",
    )  # fmt: skip
    seed: int = option(0, "seed for weights, batches and subsets")
    device: str = option("auto", "auto picks CUDA when present", choices=DEVICES)
    amp: bool = option(True, "bf16 autocast (CUDA only)")
    compile: bool = option(False, "torch.compile the model (CUDA only)")
    threads: int = option(0, "CPU threads (0: the cores this process may use)", min=0)
    progress: bool = option(True, "show progress bars")


def step_budget(config: FitConfig, n_train: int) -> int:
    """Optimizer steps of a fit on ``n_train`` molecules.

    ``epochs x ceil(n_train / batch_size)``, capped by ``max_steps`` when that is > 0, then
    raised to ``min_steps``: the floor wins over both caps.
    """
    budget = config.epochs * math.ceil(max(n_train, 1) / config.batch_size)
    if config.max_steps > 0:
        budget = min(budget, config.max_steps)
    return max(budget, config.min_steps, 1)


@dataclass
class SurrogateConfig(ModelConfig, FitConfig):
    """One surrogate's settings: its network and how it is fitted (the keys a study tunes
    and a ``surrogate_config`` file holds)."""
