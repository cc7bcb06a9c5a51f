"""Training: fitting a model (schedule, early stopping, diagnostics), predicting, metrics."""

from al.training.config import DEVICES, FitConfig, SurrogateConfig, step_budget
from al.training.fit import (
    EpochStats,
    FitResult,
    fit,
    iterate_batches,
    member_batches,
    predict,
    resolve_device,
    seed_everything,
)
from al.training.losses import ensemble_nll
from al.training.metrics import calibration_curve, calibration_scale, regression_report
from al.training.split import split_validation, validation_size
