"""How a surrogate is trained (keys of ``train``, ``al_loop``, ``pretrain``, ``hpo``)."""

from __future__ import annotations

from dataclasses import dataclass

from al.config import option

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class FitConfig:
    """How a surrogate is trained."""

    epochs: int = option(150, "maximum epochs", min=1)
    batch_size: int = option(64, "molecules per batch", min=1)
    lr: float = option(1e-3, "peak learning rate (AdamW)", min=0.0)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0)
    patience: int = option(30, "early stopping: epochs without validation improvement", min=1)
    grad_clip: float = option(10.0, "gradient norm clip (0 = off)", min=0.0)
    val_fraction: float = option(0.1, "share of the labelled set held out", min=0.0, max=0.5)
    seed: int = option(0, "seed for weights, batches and subsets")
    device: str = option("auto", "auto picks CUDA when present", choices=DEVICES)
    amp: bool = option(True, "bf16 autocast (CUDA only)")
    compile: bool = option(False, "torch.compile the model (CUDA only)")
    threads: int = option(0, "CPU threads (0 = torch's default)", min=0)
    progress: bool = option(True, "show progress bars")
