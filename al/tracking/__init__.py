"""Tracking: every MLflow name, logging, runs, the logged pyfunc model and the registry.

``from al import tracking`` gives the names and the logging helpers in one namespace.
"""

from al.tracking.log import (
    EpochLogger,
    epoch_metrics,
    log_dataset,
    log_dict_artifact,
    log_dir,
    log_figure,
    log_metrics,
    log_params,
    log_text_artifact,
    tmpdir,
)
from al.tracking.names import *
from al.tracking.runs import CampaignRun, mark_trial_killed, set_experiment, trial_runs
