"""The ``al_loop`` entry point: build a campaign's collaborators from its config and run it."""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from requests import RequestException

from al import tracking
from al.acquisition import ACQUISITIONS, Strategy, resolve_strategy
from al.baselines import Baseline, ResidualSurrogate, build_baseline
from al.config import ConfigError, build_config, mask_secrets, subset, to_dict
from al.data import qm9pack_data_dir
from al.data.config import DataConfig
from al.data.elements import ELEMENTS, SYMBOLS
from al.data.load import load_data
from al.data.molecules import MolecularData
from al.data.pools import Pool
from al.data.splits import Splits
from al.entrypoints.external import clear_awaiting, write_batch
from al.entrypoints.pool_campaign import (
    campaign_pool,
    check_cost_units,
    check_pool_digest,
    check_pool_oracles,
    check_units,
)
from al.loop.campaign import Campaign
from al.loop.config import CampaignConfig, LoopSettings
from al.loop.journal import (
    JOURNAL_DIR_ENV,
    AwaitingLabels,
    LabelsNotRecordedError,
    check_journal_dir,
    error_summary,
    journal_path,
)
from al.loop.schemes import DataScheme, build_scheme
from al.loop.selection import Selection, build_selection
from al.loop.sets import round0_requests
from al.loop.stopping import CampaignProgress, StoppingRule, build_rules, remaining
from al.loop.tracker import MlflowTracker
from al.models.config import ModelConfig
from al.oracles import DFTOracle, Oracle, PriorLabels, build_oracle
from al.runtime import configure_threads
from al.tracking.lease import CampaignInterrupted, interrupt_signal
from al.tracking.registry import register_oracles
from al.tracking.runs import StoredCampaign, bound_http_retries, read_stored_campaign
from al.training.fit import resolve_device, seed_everything
from al.uncertainty import UNCERTAINTIES, Surrogate, build_surrogate

log = logging.getLogger(__name__)


def run_campaign(
    config: CampaignConfig,
    echo: Callable[[str], None] | None = None,
    given: Collection[str] | None = None,
) -> str:
    """Build the collaborators from ``config`` and run the campaign; returns the run id.

    ``echo`` receives the one-line summary for the user (the command line passes
    ``click.echo``). With ``config.resume`` the campaign continues with its own stored
    settings and split (see :func:`resumed_settings`; ``given``: the keys the user set);
    a finished campaign is left as it is.
    """
    bound_http_retries()
    stored_splits = None
    if config.resume:
        stored = read_stored_campaign(config.resume)
        refuse_other_runs(stored)  # before anything on it changes
        check_journal(stored, config.journal_lost)
        if stored.finished:
            return leave_finished(stored, echo)
        config, stored_splits = resumed_settings(config, stored, given)
    parts = build_parts(config, stored_splits)
    config = parts.config  # as resolved (e.g. the surrogate's default dropout)
    if config.resume and parts.pool is not None:
        check_pool_digest(parts.pool, stored.tags.get(tracking.TAG_POOL_DIGEST), stored.run_id)
    if not config.resume:  # budgets that pay for no start: one line, before any run exists
        check_round0(parts)
    check_journal_dir()  # where paid labels go first: writable, before any run exists
    # takes the lease; SIGTERM now unwinds like Ctrl-C until run.end restores its handler
    run = start_run(config)
    return execute(parts, run, echo)


def leave_finished(stored: StoredCampaign, echo: Callable[[str], None] | None) -> str:
    """A finished campaign is left as it is (a run its rules stopped is marked FINISHED);
    returns its run id."""
    reason = stored.tags[tracking.TAG_STOP_REASON]
    log.info("event=resume_finished run_id=%s reason=%r", stored.run_id, reason)
    client = MlflowClient()
    if client.get_run(stored.run_id).info.status != "FINISHED":  # stopped by its rules
        client.set_terminated(stored.run_id, "FINISHED")
    if echo is not None:
        echo(f"campaign {stored.run_id} is already finished ({reason}); left as it is")
    return stored.run_id


@dataclass
class CampaignParts:
    """A campaign's collaborators, built from its config before any run exists.

    ``splits`` is the split the campaign records (its digest names it); ``labellable`` the
    one it runs on: the pool without the molecules an oracle or the baseline cannot compute.
    """

    config: CampaignConfig
    strategy: Strategy
    acquisition: str
    device: torch.device
    data: MolecularData
    splits: Splits
    labellable: Splits
    surrogate: Surrogate
    baseline: Baseline | None
    oracles: list[Oracle]
    priors: list[PriorLabels]
    rules: list[StoppingRule]
    scheme: DataScheme
    selection: Selection
    pool: Pool | None = None

    @property
    def prior_labels(self) -> float:
        """The DFT labels that built the oracles and the baseline (NaN when unknown)."""
        return float(sum(p.n for p in self.priors))

    def campaign(self, run: MlflowTracker) -> Campaign:
        """The campaign on these parts, recorded by ``run``."""
        prior = self.prior_labels
        return Campaign(
            self.config, self.data, self.labellable, self.surrogate, self.oracles, self.rules,
            scheme=self.scheme, selection=self.selection, tracker=run,
            prior_labels=prior, prior_cost=prior * DFTOracle.default_cost,
        )  # fmt: skip


def resolve_plan(config: CampaignConfig) -> tuple[CampaignConfig, Strategy, DataScheme]:
    """The strategy of ``config`` (its preset with the overrides) and its data scheme; the
    config with the surrogate's own default dropout when it sets none (MC dropout needs
    some). ValueError, one line, for an unknown acquisition, or several oracles on a
    scheme that cannot take them."""
    strategy = resolve_strategy(config.strategy, config.uncertainty, config.acquisition)
    ACQUISITIONS.get(strategy.acquisition)  # an unknown name: one line
    dropout = UNCERTAINTIES.get(strategy.uncertainty).default_dropout
    if config.dropout == 0 and dropout > 0:
        config = replace(config, dropout=dropout)
        log.info("event=dropout_default uncertainty=%s dropout=%g", strategy.uncertainty, dropout)
    scheme = build_scheme(strategy.scheme, config)
    if len(config.fidelities()) > 1 and not scheme.multi_fidelity:
        raise ValueError(
            f"strategy {config.strategy!r} ({strategy.scheme} scheme) does not support several "
            "oracles; use a pool strategy (e.g. ensemble or mc_dropout)"
        )
    return config, strategy, scheme


def build_parts(config: CampaignConfig, stored_splits: Splits | None = None) -> CampaignParts:
    """Every collaborator of the campaign ``config`` describes, checked before any run
    exists; ``stored_splits``: the split a resumed campaign was run on."""
    config, strategy, scheme = resolve_plan(config)
    fidelities = config.fidelities()
    configure_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    pool = None
    if config.pool:  # one's own molecules: no ground truth, a held-out set bought instead
        pool, data, splits = campaign_pool(config.pool, config.heldout_size, config.split_seed)
    else:
        data, splits = load_data(subset(DataConfig, config))
    if stored_splits is not None:  # a resumed campaign keeps the split it was run on
        splits = stored_splits
    check_sizes(config, len(splits.pool))
    surrogate = build_surrogate(
        strategy.uncertainty, subset(ModelConfig, config), config.fit_config(), device,
        ensemble_size=config.ensemble_size, bootstrap=config.bootstrap,
        mc_samples=config.mc_samples, n_outputs=len(fidelities),
    )  # fmt: skip
    baseline = build_baseline(
        config.baseline, config.baseline_cost if config.baseline_cost >= 0 else None
    )
    if baseline is not None:  # Δ-learning: learns target - baseline, predicts baseline + it
        baseline.free(splits.test)  # evaluation only: the test set's baseline is not paid
        surrogate = ResidualSurrogate(surrogate, baseline)
    acquirer = ACQUISITIONS.get(strategy.acquisition)
    needs = acquirer.needs - {"labelled_embedding"}
    if not needs <= surrogate.provides:
        raise ValueError(
            f"acquisition {strategy.acquisition!r} needs {sorted(needs)}, but uncertainty "
            f"{strategy.uncertainty!r} provides {sorted(surrogate.provides)}"
        )
    oracles = prepared_oracles(
        fidelities, data, splits, baseline, config.pool, config.unit, config.label_timeout()
    )
    if oracles[-1].target and not config.resume and config.target == CampaignConfig.target:
        config = replace(config, target=oracles[-1].target)  # e.g. pyscf's: not H298
    labellable = labellable_pool(data, splits, oracles, baseline)  # the recorded split stays
    check_sizes(config, len(labellable.pool))
    acquisition = config.mf_acquisition if len(oracles) > 1 else strategy.acquisition
    return CampaignParts(
        config, strategy, acquisition, device, data, splits, labellable, surrogate, baseline,
        oracles, prior_labels(oracles, baseline, data), build_rules(config.stopping_settings()),
        scheme,
        build_selection(
            data, oracles, config, acquirer if len(oracles) == 1 else acquisition, surrogate
        ),
        pool,
    )  # fmt: skip


def prepared_oracles(
    fidelities: list[tuple[str, float | None]], data: MolecularData, splits: Splits,
    baseline: Baseline | None, pool: str = "", unit: str = "eV",
    timeout_s: float | None = None,
) -> list[Oracle]:  # fmt: skip
    """The oracles of ``fidelities`` (``(spec, cost)``, cheapest first), each loaded: one
    that cannot be is refused before any run exists. A pretrained oracle warns if it may
    have seen test or pool molecules of ``splits`` (of QM9; on a ``pool``, an oracle that
    reads QM9's table is refused; a ``unit`` other than eV needs every oracle external).
    The ``baseline`` is loaded too. ``timeout_s`` limits each label of a live oracle; costs
    in two currencies (CPU-hours and DFT labels) are refused (:func:`check_cost_units`)."""
    oracles = [
        build_oracle(spec, data=data, cost=cost, timeout_s=timeout_s) for spec, cost in fidelities
    ]
    if pool:
        check_pool_oracles(oracles, pool)
    check_units(oracles, unit)
    check_cost_units(oracles, baseline)
    for oracle in oracles:
        check = getattr(oracle, "check_split", None)
        if check is not None and not pool:
            check(splits.digest())
    for oracle in oracles:
        oracle.prepare()
    if baseline is not None:
        baseline.prepare(data)
    return oracles


def check_round0(parts: CampaignParts) -> None:
    """ConfigError, one line, when the budgets do not pay for the validation set and one
    initial label (:func:`~al.loop.sets.round0_requests` on the labellable pool)."""
    pool = parts.data.rows_of(parts.labellable.pool)
    start = CampaignProgress(0, 0, 0, 0.0, pool_left=pool.numel())
    left = remaining(parts.rules, start)
    heldout = parts.data.rows_of(parts.splits.test) if parts.pool is not None else None
    round0_requests(LoopSettings.of(parts.config), parts.selection, left, pool, heldout)


def start_run(config: CampaignConfig) -> MlflowTracker:
    """The campaign's MLflow run, new or resumed (it takes the lease). A tracking server
    that is not there, refuses the credentials or lacks what the campaign starts in is
    said in one line (RuntimeError): nothing was paid yet."""
    try:
        name = tracking.run_name(config.strategy, f"s{config.seed}")
        return MlflowTracker.start(config.experiment_name, config.resume, run_name=name)
    except (MlflowException, RequestException) as err:  # nothing paid yet: say so, one line
        uri = mask_secrets(mlflow.get_tracking_uri())
        if re.search("RESOURCE_DOES_NOT_EXIST|does not exist", str(err)):  # it answered: not there
            raise RuntimeError(
                f"the tracking server {uri} does not have what the campaign starts in "
                f"({error_summary(err)}); no label was paid; check MLFLOW_EXPERIMENT_ID, the "
                "experiment name or the run id to resume"
            ) from None
        if re.search(r"error code 40[13]\b", str(err)):
            raise RuntimeError(
                f"the tracking server {uri} refused the credentials ({error_summary(err)}); "
                "no label was paid; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
                "then run again"
            ) from None
        raise RuntimeError(
            f"cannot reach the tracking server {uri} ({error_summary(err)}); no label was "
            "paid; start the server or point MLFLOW_TRACKING_URI at one, then run again"
        ) from None


def execute(parts: CampaignParts, run: MlflowTracker, echo: Callable[[str], None] | None) -> str:
    """Record the campaign's settings on ``run``, run the campaign, log its final model;
    returns the run id. The run ends FINISHED only when the campaign's rules stopped it,
    KILLED on Ctrl-C or SIGTERM, FAILED otherwise (an outage: its labels are in the
    journal, :class:`LabelsNotRecordedError` says how to resume); SCHEDULED when it waits
    for an external labeller (its batch written, :mod:`al.entrypoints.external`)."""
    status, outage = "FAILED", False  # an exception leaves the run (and its children) FAILED
    try:
        register_oracles(parts.oracles)  # the shipped oracle, once per checkpoint (never raises)
        write_metadata(run.run_id, *run_metadata(parts, run), parts.splits)
        log_campaign_datasets(run, parts.config, parts.data, parts.splits, parts.pool)
        run.journal_path.parent.mkdir(parents=True, exist_ok=True)
        run.journal_path.touch()  # exists from now on: a missing journal means a moved one
        campaign = parts.campaign(run)
        clear_awaiting(run.run_id)  # labels came in (al ingest): the campaign goes on
        reason = campaign.execute()
        mlflow.set_tag(tracking.TAG_STOP_REASON, reason)
        log_final_model(campaign, run, parts.config.register_as)
        log.info("event=campaign_done run_id=%s reason=%r", run.run_id, reason)
        if echo is not None:
            measured = "held-out MAE" if parts.pool is not None else "test MAE"
            echo(
                f"campaign {run.run_id} stopped: {reason}; "
                f"{measured} {campaign.mae_history[-1]:.4f} eV"
            )
        status = "FINISHED"  # only a campaign stopped by its rules
    except AwaitingLabels as wait:  # an external labeller: the batch goes out, the run waits
        status = "SCHEDULED"
        config = parts.config
        table = write_batch(wait, parts.data, run.run_id, config.batch_dir, config.unit,
                            config.target)  # fmt: skip
        if echo is not None:
            echo(
                f"campaign {run.run_id} waits for labels: round {wait.round}, "
                f"{len(wait.positions)} molecules in {table} (geometries: "
                f"{table.with_suffix('.xyz').name}); fill in its label column, then: "
                f"al ingest {run.run_id} {table} && al al-loop --resume {run.run_id}"
            )
    except (MlflowException, RequestException) as err:  # the tracking server is gone
        outage = True
        raise LabelsNotRecordedError(run.run_id, run.journal_path, err) from None
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM from a scheduler
        status = "KILLED"
        raise CampaignInterrupted(run.run_id, interrupt_signal(err)) from err
    finally:
        run.end(status, outage=outage)
    return run.run_id


def run_metadata(parts: CampaignParts, run: MlflowTracker) -> tuple[dict[str, str], dict[str, Any]]:
    """The campaign run's tags and its resolved config (the config with what it resolved
    to: uncertainty, acquisition, oracles and costs, device, split, prior labels)."""
    config, strategy, oracles = parts.config, parts.strategy, parts.oracles
    baseline = parts.baseline
    oracle_tag, digest = ",".join(o.name for o in oracles), parts.splits.digest()
    resolved = {
        **to_dict(config), "resolved_uncertainty": strategy.uncertainty,
        "resolved_acquisition": parts.acquisition, "split_digest": digest,
        "resolved_oracles": oracle_tag,
        "resolved_costs": ",".join(f"{o.cost_per_label:g}" for o in oracles),
        "device_resolved": str(parts.device),
        "resolved_baseline_cost": baseline.cost_per_molecule if baseline else 0.0,
        "prior_labels": parts.prior_labels,
        "prior_labels_sources": "; ".join(f"{p.source}: {p.n:g}" for p in parts.priors),
    }  # fmt: skip
    tags = {
        tracking.TAG_KIND: tracking.KIND_CAMPAIGN, tracking.TAG_STRATEGY: config.strategy,
        tracking.TAG_ORACLE: oracle_tag, tracking.TAG_SEED: str(config.seed),
        tracking.TAG_UNCERTAINTY: strategy.uncertainty,
        tracking.TAG_ACQUISITION: parts.acquisition,
        tracking.TAG_FIDELITIES: str(len(oracles)), tracking.TAG_SPLIT_DIGEST: digest,
        tracking.TAG_JOURNAL: str(run.journal_path),
        tracking.TAG_EVALUATED_ON: tracking.EVALUATED_ON_TEST,
        tracking.TAG_TARGET: f"{config.target} ({config.unit})",
    }  # fmt: skip
    if parts.pool is not None:
        tags[tracking.TAG_POOL] = parts.pool.name
        tags[tracking.TAG_POOL_DIGEST] = parts.pool.digest
        tags[tracking.TAG_EVALUATED_ON] = tracking.EVALUATED_ON_HELDOUT
    return tags, resolved


def log_campaign_datasets(
    run: MlflowTracker, config: CampaignConfig, data: MolecularData, splits: Splits,
    pool: Pool | None = None,
) -> None:  # fmt: skip
    """The pool and the test set as dataset inputs of the campaign run (and of its round
    runs): digests, schemas and sizes; the molecules stay in the QM9 files (or the pool's
    folder; a pool's held-out set has no reference values until it is labelled)."""
    test = data.rows_of(splits.test)  # [n_test] rows
    if pool is not None:
        run.log_campaign_datasets(
            pool.digest, splits.digest(), str(pool.path), np.asarray(splits.pool, np.int64),
            np.asarray(splits.test, np.int64), None, corpus=f"pool.{pool.name}",
        )  # fmt: skip
        return
    run.log_campaign_datasets(
        data.digest(), splits.digest(), str(config.data_root or qm9pack_data_dir()),
        np.asarray(splits.pool, dtype=np.int64), data.qm9_index[test].numpy(),
        data.y[test].numpy(),
    )  # fmt: skip


def labellable_pool(
    data: MolecularData, splits: Splits, oracles: list[Oracle], baseline: Baseline | None
) -> Splits:
    """``splits`` without the pool molecules that an oracle or the baseline cannot compute
    (an element outside its ``supported_elements``, e.g. F for ANI), how many said in one
    log line; test and oracle sets unchanged. Such a molecule would only be a failed label
    or a baseline fallback."""
    limits = {o.name: o.supported_elements for o in oracles if o.supported_elements is not None}
    if baseline is not None and baseline.supported_elements is not None:
        limits[f"baseline:{baseline.spec}"] = baseline.supported_elements
    if not limits:
        return splits
    allowed = frozenset.intersection(*limits.values())
    others = [k for k, z in enumerate(ELEMENTS.values()) if z not in allowed]
    keep = (data.composition(data.rows_of(splits.pool))[:, others] == 0).all(1).numpy()
    log.info(
        "event=pool_unsupported_elements left_out=%d pool=%d kept=%d labellers=%s elements=%s",
        int((~keep).sum()), keep.size, int(keep.sum()), ",".join(limits),
        ",".join(SYMBOLS[z] for z in sorted(allowed) if z in SYMBOLS),
    )  # fmt: skip
    return replace(splits, pool=splits.pool[keep])


def prior_labels(
    oracles: list[Oracle], baseline: Baseline | None, data: MolecularData
) -> list[PriorLabels]:
    """The DFT labels that built the oracles and the baseline (each source once: an xTB
    oracle and an xTB baseline share one reference)."""
    found = [o.prior_labels() for o in oracles]
    if baseline is not None:
        found.append(baseline.prior_labels(data))
    unique = {p.source: p for p in found if p is not None}
    return list(unique.values())


def log_final_model(campaign: Campaign, tracker: MlflowTracker, register_as: str = "") -> str:
    """The final surrogate as the campaign's MLflow model, plus final plots and the labelled
    set, registered as ``register_as`` when given; returns the model URI."""
    return tracker.log_final_model(campaign.final_artifacts(), campaign.labelled.table, register_as)


#: Settings a resume may change: how far the campaign goes and where it runs. Any other
#: setting given with ``resume`` must equal the campaign's own.
RESUME_EXTENSIONS = (
    "rounds", "budget_labels", "budget_cost", "target_mae", "plateau_rounds", "device",
    "threads", "progress", "experiment_name", "journal_lost", "register_as",
)  # fmt: skip


def check_sizes(config: CampaignConfig, n_pool: int) -> None:
    """ValueError, one line, for sizes the pool cannot serve, or a campaign without any
    limit, before anything is paid or any run is created."""
    if config.batch_size > n_pool:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the pool ({n_pool:,} "
            f"molecules); expected at most {n_pool} labels per round"
        )
    if config.initial_size + config.val_size > n_pool:
        raise ValueError(
            f"initial_size {config.initial_size} + val_size {config.val_size} is more than the "
            f"pool ({n_pool:,} molecules); expected at most {n_pool:,} together"
        )
    limits = (config.rounds, config.budget_labels, config.budget_cost, config.target_mae,
              config.plateau_rounds)  # fmt: skip
    if not any(limits):
        raise ValueError(
            f"rounds=0 sets no limit, and no budget_labels, budget_cost, target_mae or "
            f"plateau_rounds is set: the campaign would label the whole pool ({n_pool:,} "
            "molecules); set rounds to the acquisition rounds wanted, or one of those"
        )


def check_journal(stored: StoredCampaign, lost: bool) -> None:
    """ValueError, one line, when the label journal the campaign's ``al.journal`` tag names
    is neither there nor at ``$AL_JOURNAL_DIR/<run id>.jsonl``: resuming without it could
    buy again labels it paid after its last recorded round. ``lost`` (``journal_lost``)
    resumes all the same."""
    tagged = stored.tags.get(tracking.TAG_JOURNAL)
    here = journal_path(stored.run_id)
    if lost or not tagged or here.exists() or Path(tagged).exists():
        return
    raise ValueError(
        f"the label journal of campaign {stored.run_id} is not on this machine (tag "
        f"{tracking.TAG_JOURNAL}: {tagged}; nor at {here}): labels it paid after its last "
        f"recorded round would be bought again; copy it to {here}, or set "
        f"{JOURNAL_DIR_ENV} to the folder that holds it, and resume; if it is lost for good, "
        "resume with journal_lost=true"
    )


def refuse_other_runs(stored: StoredCampaign) -> None:
    """ValueError, one line, for a run that is not a campaign (no ``al.kind=campaign``)."""
    if stored.kind != tracking.KIND_CAMPAIGN:
        kind = tracking.TAG_KIND
        what = f"{kind}={stored.kind}" if stored.kind else f"no {kind} tag"
        raise ValueError(
            f"run {stored.run_id} is not a campaign ({what}); resume takes the run id of an "
            "al_loop campaign, and leaves any other run as it is"
        )


def resumed_settings(
    config: CampaignConfig, stored: StoredCampaign, given: Collection[str] | None = None
) -> tuple[CampaignConfig, Splits | None]:
    """The settings a resumed campaign runs with, and its stored split (None if it has none).

    They are the campaign's own resolved config (``config.yaml`` on its run) plus the
    :data:`RESUME_EXTENSIONS` given in ``config``. A setting counts as given when its key
    is in ``given`` (the options and config-file keys the user set; ``--seed 0`` on a
    campaign of seed 3 is refused) or its value differs from the :class:`CampaignConfig`
    default; a given setting outside the extensions must equal the stored one, else one
    error line names the keys that differ. A run killed before its config was written
    continues with ``config`` as given. Refuses a run that is not a campaign (a campaign is
    tagged ``al.kind=campaign`` the moment its run is created), before anything on it
    changes.
    """
    run_id = config.resume
    refuse_other_runs(stored)
    splits = None
    if stored.splits_json is not None:
        with tempfile.TemporaryDirectory(prefix="al-") as tmp:
            path = Path(tmp) / "splits.json"
            path.write_text(stored.splits_json)
            splits = Splits.load(path)
    if stored.config is None:
        return config, splits
    names = [f.name for f in fields(CampaignConfig) if f.name != "resume"]
    own_values = {k: v for k, v in stored.config.items() if k in names}
    own_values.setdefault("val_size", 0)  # a campaign from before the validation set
    own = build_config(CampaignConfig, own_values)
    defaults = CampaignConfig()
    explicit = set(given or ())
    values = {
        k: getattr(config, k)
        for k in names
        if k in explicit or getattr(config, k) != getattr(defaults, k)
    }
    differ = [k for k, v in values.items() if k not in RESUME_EXTENSIONS and v != getattr(own, k)]
    if differ:
        keys = ", ".join(f"{k} (given {values[k]!r}, campaign {getattr(own, k)!r})" for k in differ)
        raise ConfigError(
            f"resume {run_id}: settings differ from the campaign's own: {keys}; only "
            f"{', '.join(RESUME_EXTENSIONS)} may change on resume"
        )
    extensions = {k: v for k, v in values.items() if k in RESUME_EXTENSIONS}
    if extensions:
        log.info("event=resume_extensions run_id=%s %s", run_id, extensions)
    return replace(own, resume=run_id, **extensions), splits


def write_metadata(
    run_id: str, tags: dict[str, str], resolved: dict[str, Any], splits: Splits
) -> None:
    """Tags, params, resolved config and split of the campaign run: whatever it lacks (a
    resumed run killed before they were written gets them now). The config artifact is
    rewritten when a resume extended it (:data:`RESUME_EXTENSIONS`); params, which MLflow
    never changes, keep their first values."""
    client = MlflowClient()
    run = client.get_run(run_id)
    missing = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
    if missing:
        mlflow.set_tags(missing)
    tracking.log_params({k: v for k, v in resolved.items() if k != "resume"})
    stored = read_stored_campaign(run_id)
    own = {k: v for k, v in resolved.items() if k != "resume"}
    if stored.config is None or {k: v for k, v in stored.config.items() if k != "resume"} != own:
        tracking.log_dict_artifact(resolved, tracking.Artifacts.CONFIG)
    if stored.splits_json is None:
        tracking.log_text_artifact(splits.to_json(), tracking.Artifacts.SPLITS)
