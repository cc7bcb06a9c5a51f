"""The ``al_loop`` entry point: build a campaign's collaborators from its config and run it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import mlflow

from al import tracking
from al.acquisition import ACQUISITIONS, resolve_strategy
from al.config import subset, to_dict
from al.data.config import DataConfig
from al.data.load import load_data
from al.loop.campaign import Campaign
from al.loop.config import CampaignConfig
from al.loop.schemes import build_scheme
from al.loop.selection import build_selection
from al.loop.stopping import build_rules
from al.loop.tracker import MlflowTracker
from al.models.config import ModelConfig
from al.oracles import build_oracle
from al.runtime import configure_threads
from al.tracking.registry import register_oracles
from al.training.fit import resolve_device, seed_everything
from al.uncertainty import build_surrogate

log = logging.getLogger(__name__)


def run_campaign(config: CampaignConfig, echo: Callable[[str], None] | None = None) -> str:
    """Build the collaborators from ``config`` and run the campaign; returns the run id.

    ``echo`` receives the one-line summary for the user (the command line passes
    ``click.echo``).
    """
    strategy = resolve_strategy(config.strategy, config.uncertainty, config.acquisition)
    if strategy.acquisition not in ACQUISITIONS:
        raise ValueError(
            f"unknown acquisition {strategy.acquisition!r}; expected one of: "
            f"{', '.join(ACQUISITIONS)}"
        )
    if strategy.uncertainty == "mc_dropout" and config.dropout == 0:
        config = replace(config, dropout=0.1)
        log.info("event=mc_dropout_default dropout=0.1")
    fidelities = config.fidelities()
    if len(fidelities) > 1 and strategy.scheme != "pool":
        raise ValueError(
            f"strategy {config.strategy!r} ({strategy.scheme} scheme) does not support several "
            "oracles; use a pool strategy (e.g. ensemble or mc_dropout)"
        )
    configure_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    data, splits = load_data(subset(DataConfig, config))
    surrogate = build_surrogate(
        strategy.uncertainty, subset(ModelConfig, config), config.fit_config(), device,
        ensemble_size=config.ensemble_size, bootstrap=config.bootstrap,
        mc_samples=config.mc_samples, n_outputs=len(fidelities),
    )  # fmt: skip
    needs = ACQUISITIONS[strategy.acquisition].needs - {"labelled_embedding"}
    if not needs <= surrogate.provides:
        raise ValueError(
            f"acquisition {strategy.acquisition!r} needs {sorted(needs)}, but uncertainty "
            f"{strategy.uncertainty!r} provides {sorted(surrogate.provides)}"
        )
    oracles = [build_oracle(spec, data=data, cost=cost) for spec, cost in fidelities]
    for oracle in oracles:  # a pretrained oracle warns if it may have seen test/pool molecules
        check = getattr(oracle, "check_split", None)
        if check is not None:
            check(splits.digest())
    acquisition = config.mf_acquisition if len(oracles) > 1 else strategy.acquisition
    oracle_tag = ",".join(o.name for o in oracles)
    rules = build_rules(config.stopping_settings())
    scheme = build_scheme(strategy.scheme, config)
    selection = build_selection(data, oracles, config, acquisition, surrogate)
    run = MlflowTracker.start(config.experiment_name, config.resume)
    try:
        register_oracles(oracles)  # the shipped oracle, once per checkpoint (never raises)
        resolved = {
            **to_dict(config), "resolved_uncertainty": strategy.uncertainty,
            "resolved_acquisition": acquisition, "split_digest": splits.digest(),
            "resolved_oracles": oracle_tag,
            "resolved_costs": ",".join(f"{o.cost_per_label:g}" for o in oracles),
            "device_resolved": str(device),
        }  # fmt: skip
        if not config.resume:
            mlflow.set_tags({
                tracking.TAG_KIND: tracking.KIND_CAMPAIGN, tracking.TAG_STRATEGY: config.strategy,
                tracking.TAG_ORACLE: oracle_tag, tracking.TAG_SEED: str(config.seed),
                tracking.TAG_UNCERTAINTY: strategy.uncertainty,
                tracking.TAG_ACQUISITION: acquisition,
                tracking.TAG_FIDELITIES: str(len(oracles)),
                tracking.TAG_SPLIT_DIGEST: splits.digest(),
            })  # fmt: skip
            tracking.log_params({k: v for k, v in resolved.items() if k != "resume"})
            tracking.log_dict_artifact(resolved, tracking.Artifacts.CONFIG)
            tracking.log_text_artifact(splits.to_json(), tracking.Artifacts.SPLITS)
        campaign = Campaign(
            config, data, splits, surrogate, oracles, rules,
            scheme=scheme, selection=selection, tracker=run,
        )  # fmt: skip
        reason = campaign.execute()
        mlflow.set_tag(tracking.TAG_STOP_REASON, reason)
        log_final_model(campaign, run)
        log.info("event=campaign_done run_id=%s reason=%r", run.run_id, reason)
        if echo is not None:
            echo(
                f"campaign {run.run_id} stopped: {reason}; "
                f"test MAE {campaign.mae_history[-1]:.4f} eV"
            )
    finally:
        mlflow.end_run()
    return run.run_id


def log_final_model(campaign: Campaign, tracker: MlflowTracker) -> str:
    """The final surrogate as the campaign's MLflow model, plus final plots and the labelled
    set; returns the model URI."""
    return tracker.log_final_model(campaign.final_artifacts(), campaign.labelled.table)
