"""Every MLflow name the project writes: tags, metric keys, artifact layout.

Nothing else in the project spells a tag, a metric key or an artifact path.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

# --- tags -------------------------------------------------------------------------------
TAG_KIND = "al.kind"
KIND_TRAIN = "train"
KIND_CAMPAIGN = "campaign"
KIND_REPORT = "report"
TAG_MODEL = "al.model"
TAG_SEED = "al.seed"
TAG_SPLIT_DIGEST = "al.split_digest"
TAG_MODEL_URI = "al.model_uri"


# --- metric keys ------------------------------------------------------------------------
class Metrics:
    """Metric names, defined once."""

    TRAIN_LOSS = "train_loss"
    VAL_MAE = "val_mae"
    LR = "lr"
    THROUGHPUT = "train_mol_per_s"
    DATA_TIME = "data_time_s"
    COMPUTE_TIME = "compute_time_s"
    TEST_MAE = "test_mae"
    TEST_RMSE = "test_rmse"
    TEST_MAX_AE = "test_max_ae"
    BASELINE_TEST_MAE = "baseline_test_mae"
    BEST_EPOCH = "best_epoch"
    BEST_VAL_MAE = "best_val_mae"
    FIT_SECONDS = "fit_seconds"
    N_PARAMETERS = "n_parameters"

    @staticmethod
    def weight_norm(group: str) -> str:
        return f"weight_norm.{group}"

    @staticmethod
    def grad_norm(group: str) -> str:
        return f"grad_norm.{group}"

    @staticmethod
    def act_norm(block: str) -> str:
        return f"act_norm.{block}"


# --- artifact layout --------------------------------------------------------------------
class Artifacts:
    CONFIG = "config.yaml"
    SPLITS = "splits/splits.json"
    PARITY = "plots/parity.png"
    CURVES = "plots/training_curves.png"
    PREDICTIONS = "predictions/test.csv"
    PROFILE_DIR = "profile"
    MODEL_NAME = "model"


# --- campaigns ----------------------------------------------------------------------------
TAG_STRATEGY = "al.strategy"
TAG_ORACLE = "al.oracle"
TAG_UNCERTAINTY = "al.uncertainty"
TAG_ACQUISITION = "al.acquisition"
TAG_FIDELITIES = "al.fidelities"
#: experiment grids (al.entrypoints.experiment) and their report (al.report)
KIND_EXPERIMENT = "experiment"
TAG_GRID = "al.grid"
TAG_GRID_DIGEST = "al.grid_digest"
TAG_CELL = "al.cell"
TAG_REPORT_OF = "al.report_of"
#: on an `mlflow run -e compare` run outside the compared experiment: the report run logged
TAG_REPORT_RUN = "al.report_run"
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"
TAG_GRID_PARENT_RUN = "al.grid_parent_run"
TAG_ROUND = "al.round"
TAG_COMPLETED_ROUND = "al.completed_round"
TAG_STOP_REASON = "al.stop_reason"
TAG_DATA_VERSION = "al.data_version"
TAG_RESUMED_INTO = "al.resumed_into"
#: where the campaign's label journal lives (a local file on the machine that ran it)
TAG_JOURNAL = "al.journal"
#: the process that owns a campaign run now (al.tracking.lease): JSON owner/since/heartbeat
TAG_LEASE = "al.lease"
#: a pool campaign's pool (its name) and the pool's content digest when it started
TAG_POOL = "al.pool"
TAG_POOL_DIGEST = "al.pool_digest"
#: a campaign waiting for an external labeller's answers: the round and batch size it waits for
TAG_AWAITING_LABELS = "al.awaiting_labels"
#: what a campaign's labels are and their unit, e.g. ``H298 atomization enthalpy (eV)``
TAG_TARGET = "al.target"
#: what a campaign's figures are measured on: QM9's test set, or a pool's held-out set
TAG_EVALUATED_ON = "al.evaluated_on"
EVALUATED_ON_TEST, EVALUATED_ON_HELDOUT = "test set", "held-out labelled molecules"
KIND_ROUND = "round"


#: characters that an oracle's name keeps in a metric name (MLflow allows these, and ``:``
#: and ``/``, which are replaced all the same so that a key never looks like a path)
_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9_.\- ]")


class CampaignMetrics:
    """Per-round metric names on the campaign run (``step = n_labelled``)."""

    N_LABELLED = "n_labelled"
    ROUND = "round"
    COST_SPENT = "cost_spent"
    #: of ``cost_spent``: paid for answers a kill lost before they were journalled, bought
    #: again (at most one chunk of an oracle's answers per kill); logged when not 0
    COST_LOST = "cost_lost"
    #: what a Δ-learning baseline's cheap labels cost so far (included in ``cost_spent``)
    COST_BASELINE = "cost_baseline"
    N_REQUESTED = "n_requested"
    N_FAILED = "n_failed"
    POOL_SCORED = "pool_scored"
    #: validation MAE of the round's fit (the weights kept); what target_mae and
    #: plateau_rounds read (the test set is for reporting only)
    VAL_MAE = "val_mae"
    TEST_MAE = "test_mae"
    TEST_RMSE = "test_rmse"
    TEST_MAX_AE = "test_max_ae"
    #: 95th / 99th percentile of the absolute test error (eV)
    TEST_P95_AE = "test_p95_ae"
    TEST_P99_AE = "test_p99_ae"
    TEST_NLL = "test_nll"
    TEST_SPEARMAN = "test_spearman_std_err"
    TEST_MISCALIBRATION = "test_miscalibration_area"
    TEST_MEAN_STD = "test_mean_std"
    #: before the std scale fitted on the validation set (``std_scale``) is applied
    TEST_NLL_RAW = "test_nll_raw"
    TEST_MISCALIBRATION_RAW = "test_miscalibration_area_raw"
    STD_SCALE = "std_scale"
    FIT_STEPS = "fit_steps"
    #: 1 when the round's fit continued from the previous round's weights
    WARM_START = "warm_start"
    TIME_FIT = "time_fit_s"
    TIME_SCORE = "time_score_s"
    TIME_SELECT = "time_select_s"
    TIME_LABEL = "time_label_s"
    TIME_LOG = "time_log_s"
    FIT_EPOCHS = "fit_epochs"
    RETRAINED = "retrained"
    TRAINED_ON = "trained_on_labels"

    #: labels of the campaign's validation set (paid once, in round 0, never trained on)
    #: and what they cost (included in ``cost_spent``)
    N_VALIDATION = "n_validation"
    COST_VALIDATION = "cost_validation"
    #: a pool campaign's held-out set (its test set, bought in round 0, never trained on)
    N_HELDOUT = "n_heldout"
    COST_HELDOUT = "cost_heldout"
    #: what the labels that trained an oracle or baseline model cost (its training run's
    #: lineage), counted once; ``cost_spent`` does not include it, ``cost_total`` does
    COST_PRIOR = "cost_prior"
    N_PRIOR_LABELS = "n_prior_labels"
    COST_TOTAL = "cost_total"

    @staticmethod
    def final_refit(metric: str) -> str:
        """The same metric of the last round refitted from scratch (``final_refit``)."""
        return f"final_refit.{metric}"

    @staticmethod
    def converged(metric: str) -> str:
        """The same metric of a converged checkpoint: the labelled set refitted from scratch
        to convergence (``checkpoints``), logged at the checkpoint's step."""
        return f"converged.{metric}"

    #: prefix of the per-oracle label counts (:meth:`labels_from`)
    LABELS_FROM_PREFIX = "n_labels."

    @staticmethod
    def oracle_key(oracle: str) -> str:
        """``oracle`` as it appears in metric and column names: every character MLflow
        refuses in a metric name (``@`` of a registry alias, for one) and ``:`` and ``/``
        become ``_``: ``model:models:/qm9-oracle@hifi`` -> ``model_models__qm9-oracle_hifi``.
        """
        return _NOT_IN_KEY.sub("_", oracle)

    @staticmethod
    def labels_from(oracle: str) -> str:
        """Successful labels bought from ``oracle`` so far (one metric per fidelity)."""
        return CampaignMetrics.LABELS_FROM_PREFIX + CampaignMetrics.oracle_key(oracle)


QUERIED_COLUMNS = (
    "qm9_index", "round", "oracle", "label", "status", "cost", "score", "pred_mean", "pred_std",
    "role", "label_std",
)  # fmt: skip
#: a pool campaign's queried rows also carry each molecule's id and SMILES, after these
MOLECULE_COLUMNS = ("id", "smiles")


def queried_layout(columns: Iterable[str]) -> list[str]:
    """The columns a queried table is written with: :data:`QUERIED_COLUMNS`, then the
    :data:`MOLECULE_COLUMNS` among ``columns``."""
    have = set(columns)
    return [*QUERIED_COLUMNS, *(c for c in MOLECULE_COLUMNS if c in have)]


#: ``label_std``: the oracle's own std of a label (an ensemble oracle's, e.g. ANI's 8
#: networks), NaN for an oracle without one and in tables written before it existed
#: ``role`` of a queried row: a training label, one of the campaign's validation set, or
#: one of a pool campaign's held-out set (its test set: no ground truth)
ROLE_TRAIN, ROLE_VALIDATION, ROLE_HELDOUT = "train", "validation", "heldout"
#: the campaign's validation set (its rows of the queried tables), on the campaign run
VALIDATION_TABLE = "validation.csv"
#: columns of every test-set prediction table (a round's, a converged checkpoint's)
PREDICTION_COLUMNS = ("qm9_index", "target", "mean", "std", "std_raw")


def converged_predictions_path(n_labelled: int, table: str = "test") -> str:
    """The ``table`` (``test`` or ``validation``) predictions of the converged checkpoint at
    ``n_labelled`` (campaign run)."""
    return f"converged/labels_{n_labelled:05d}/{table}.csv"


def round_folder(round_: int) -> str:
    """The artifact folder of round ``round_`` on a campaign run: ``rounds/round_NNN``."""
    return f"rounds/round_{round_:03d}"


def queried_path(round_: int) -> str:
    return f"{round_folder(round_)}/queried.csv"


ROUND_CHECKPOINT = "checkpoint/model.pt"
CAMPAIGN_PLOTS = (
    "plots/learning_curve.png", "plots/parity.png", "plots/std_vs_error.png",
    "plots/calibration.png",
)  # fmt: skip

# --- datasets (mlflow.log_input): which role a set of molecules plays in a run -------------
CONTEXT_POOL = "pool"
CONTEXT_TRAINING = "training"
CONTEXT_EVALUATION = "evaluation"
#: metrics of a campaign's final model linked to its LoggedModel, read at the last step
FINAL_MODEL_METRICS = (
    CampaignMetrics.TEST_MAE, CampaignMetrics.TEST_RMSE, CampaignMetrics.TEST_MAX_AE,
    CampaignMetrics.TEST_P95_AE, CampaignMetrics.TEST_P99_AE, CampaignMetrics.TEST_NLL,
    CampaignMetrics.TEST_SPEARMAN, CampaignMetrics.TEST_MISCALIBRATION,
)  # fmt: skip
#: the alias ``al compare`` sets on the registered model of the report's best arm
BEST_ALIAS = "best"
#: on a report run: the arm it found best, and by which metric
TAG_BEST_ARM = "al.best_arm"


def dataset_name(data_digest: str, role: str, version: str, corpus: str = "qm9") -> str:
    """``<corpus>-<data digest>-<role>-<version>``: ``corpus`` is ``qm9`` or
    ``pool.<name>``; ``role`` is ``train``, ``test``, ``heldout`` (a pool's test set),
    ``pool`` or ``labelled``; ``version`` the split digest, or for a labelled set its
    round."""
    return f"{corpus}-{data_digest}-{role}-{version}"


def short_id() -> str:
    """Six random hex digits that tell apart runs of the same name parts (from the operating
    system's randomness: a seeded ``random`` or torch does not repeat them)."""
    return uuid.uuid4().hex[:6]


def run_name(*parts: object) -> str:
    """A run's display name: ``parts`` joined by ``-`` and a :func:`short_id`, e.g.
    ``ensemble-s0-3fa9c1``; two runs of the same settings and seed never share one."""
    return "-".join([*(str(p) for p in parts if str(p)), short_id()])


# --- hyper-parameter optimisation -----------------------------------------------------------
# One parent run per Optuna study (al.kind=hpo), one nested run per trial (al.kind=trial).
KIND_HPO = "hpo"
KIND_TRIAL = "trial"
TAG_STUDY = "al.study"
TAG_TRIAL_NUMBER = "optuna.trial_number"
TAG_TRIAL_STATE = "al.trial_state"
TAG_BEST_TRIAL = "al.best_trial"
#: the workers a study finished without (they died; their trials were retried)
TAG_RECOVERED_WORKERS = "al.recovered_workers"
TRIAL_COMPLETE, TRIAL_PRUNED, TRIAL_FAILED = "complete", "pruned", "failed"
#: The best trial's surrogate settings, keys that ``train`` and ``al_loop`` accept.
BEST_PARAMS = "best_params.yaml"
SEARCH_SPACE = "search_space.yaml"
PLOT_OPTIMIZATION_HISTORY = "plots/optimization_history.png"
PLOT_PARAM_IMPORTANCES = "plots/param_importances.png"
NOTE_PARAM_IMPORTANCES = "plots/param_importances_skipped.txt"


class HPOMetrics:
    """Metric names of study (parent) runs; trial runs use :class:`Metrics`."""

    BEST_VALUE = "best_val_mae"
    N_COMPLETE = "n_complete"
    N_PRUNED = "n_pruned"
    N_FAILED = "n_failed"


def trial_run_name(number: int) -> str:
    return f"trial_{number:04d}"


# --- pretraining (oracle models) -------------------------------------------------------------
KIND_PRETRAIN = "pretrain"
TAG_FIDELITY = "al.fidelity"
TAG_SHA256 = "al.sha256"
TAG_REGISTERED_MODEL = "al.registered_model"
KIND_LABEL = "label"
#: the MLflow experiment where oracle models are registered from
ORACLE_EXPERIMENT = "al-oracles"
