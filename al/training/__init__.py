"""Training: fitting a model (schedule, early stopping, diagnostics), predicting, metrics."""

from al.training.config import DEVICES, FitConfig
from al.training.fit import (
    EpochStats,
    FitResult,
    fit,
    iterate_batches,
    predict,
    resolve_device,
    seed_everything,
)
from al.training.metrics import regression_report
