"""The active-learning loop: fit, evaluate, score, select, label, log, stop."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from al import plots, tracking
from al.acquisition.functions import ACQUISITIONS, select
from al.data.molecules import MolecularData
from al.data.splits import Splits
from al.loop.config import CampaignConfig
from al.loop.ledger import Labelled
from al.loop.stopping import CampaignProgress, StoppingRule, first_reason
from al.models.checkpoint import load_checkpoint, save_checkpoint
from al.oracles import Oracle
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.tracking import CampaignRun
from al.tracking.pyfunc import log_pyfunc_model
from al.training.metrics import regression_report
from al.uncertainty import Prediction, Surrogate

log = logging.getLogger(__name__)
T = TypeVar("T")


def round_generator(seed: int, round_: int, purpose: str) -> torch.Generator:
    """A generator that depends only on (seed, round, purpose): a resumed round draws the
    same subsample and makes the same choices as the interrupted one would have."""
    digest = hashlib.sha256(f"{seed}/{round_}/{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % 2**63)


class Campaign:
    """One campaign: the collaborators are built by :func:`run_campaign` and passed in."""

    def __init__(
        self,
        config: CampaignConfig,
        data: MolecularData,
        splits: Splits,
        surrogate: Surrogate,
        acquisition: str,
        oracles: list[Oracle],
        rules: list[StoppingRule],
        run: CampaignRun,
        scheme: str = "pool",
    ) -> None:
        self.config, self.data, self.splits, self.scheme = config, data, splits, scheme
        self.surrogate, self.acquisition, self.oracles = surrogate, acquisition, oracles
        self.rules, self.run = rules, run
        #: several oracles: a multi-fidelity campaign (cheapest first, the last is the target)
        self.multi = len(oracles) > 1
        self.fidelity_of = {o.name: d for d, o in enumerate(oracles)}
        self.costs = torch.tensor([o.cost_per_label for o in oracles], dtype=torch.float64)
        self.pool = data.rows_of(splits.pool)
        self.test = data.rows_of(splits.test)
        self.labelled = Labelled.empty()
        self.mae_history: list[float] = []
        self.timings: dict[str, float] = {}
        self.trained_on = 0  # labelled-set size of the current model
        self.last_report: dict[str, float] = {}

    # --- the algorithm ---------------------------------------------------------------------
    def execute(self) -> str:
        """Run (or continue) the campaign until a stopping rule fires; returns the reason."""
        round_, fitted = self.restore()
        if round_ < 0:
            round_ = 0
            self.label(0, self.initial_selection())
        while True:
            if not fitted:
                self.fit_and_evaluate(round_)
            fitted = False
            reason = first_reason(self.rules, self.progress(round_))
            if reason:
                return reason
            round_ += 1
            candidates = self.candidates(round_)
            if candidates.numel() == 0:
                return "no candidates left"
            self.timings["pool_scored"] = candidates.numel()
            log.info("event=phase phase=score round=%d n=%d", round_, candidates.numel())
            pred = self.timed("score", self.surrogate.predict, self.data, candidates)
            chosen = self.timed("select", self.choose, round_, candidates, pred)
            self.label(round_, chosen, pred)

    def needs_refit(self) -> bool:
        """Pool scheme: every round. Stream scheme: once the labelled set has grown by
        ``retrain_fraction`` since the model was trained."""
        if self.scheme == "pool" or not self.trained_on:
            return True
        grown = len(self.labelled.ok) - self.trained_on
        return grown >= self.config.retrain_fraction * self.trained_on

    def fit_and_evaluate(self, round_: int) -> None:
        if not self.needs_refit():
            self.timings["fit"] = 0.0
            self.mae_history.append(self.last_report["mae"])
            self.log_round_metrics(round_, self.last_report, 0, retrained=False)
            log.info("event=round_done round=%d retrained=0", round_)
            return
        train_data, train_rows, val_rows = self.training_set(round_)
        with mlflow.start_run(run_name=f"round_{round_:03d}", nested=True) as child:
            mlflow.set_tags({tracking.TAG_KIND: tracking.KIND_ROUND, tracking.TAG_ROUND: round_,
                             tracking.TAG_DATA_VERSION: self.labelled.digest()})  # fmt: skip
            logger = tracking.EpochLogger(child.info.run_id)
            log.info("event=phase phase=fit round=%d n_train=%d", round_, train_rows.numel())
            t0 = time.perf_counter()
            result = self.surrogate.fit(train_data, train_rows, val_rows, on_epoch=logger)
            self.timings["fit"] = time.perf_counter() - t0
            logger.flush()
            pred = self.surrogate.predict(self.data, self.test)
            report = regression_report(pred.mean, self.data.y[self.test], pred.std)
            t0 = time.perf_counter()
            self.log_round_artifacts(round_, pred, result.history)
        self.mae_history.append(report["mae"])
        self.trained_on, self.last_report = len(self.labelled.ok), report
        self.log_round_metrics(round_, report, len(result.history))
        # this round's own logging time (artifacts, model, metrics), sent on its own
        log_s = time.perf_counter() - t0
        tracking.log_metrics(
            {CM.TIME_LOG: log_s}, step=len(self.labelled.ok), run_id=self.run.run_id
        )
        log.info(
            "event=round_done round=%d n_labelled=%d test_mae=%.4f fit_s=%.1f",
            round_, len(self.labelled.ok), report["mae"], self.timings["fit"],
        )  # fmt: skip

    # --- steps -------------------------------------------------------------------------------
    def initial_selection(self) -> pd.DataFrame:
        gen = round_generator(self.config.seed, 0, "initial")
        k = min(self.config.initial_size, self.pool.numel())
        rows = self.pool[torch.randperm(self.pool.numel(), generator=gen)[:k]]
        if not self.multi:
            return self.request_frame(rows, None, None)
        # multi-fidelity: the initial molecules get every fidelity, so that the surrogate
        # sees how the fidelities relate from the start
        frames = [
            self.request_frame(rows, None, None, fidelity=torch.full_like(rows, d))
            for d in range(len(self.oracles))
        ]
        return pd.concat(frames, ignore_index=True)

    def candidates(self, round_: int) -> Tensor:
        """Pool rows never asked for, subsampled when ``pool_subsample`` is set.

        In the stream scheme only the chunk arriving in this round is offered.
        """
        asked = torch.as_tensor(self.asked_high())
        pool = self.pool
        if self.scheme == "stream":
            order = torch.randperm(
                pool.numel(), generator=round_generator(self.config.seed, 0, "stream")
            )
            c = self.config.stream_chunk
            pool = pool[order[(round_ - 1) * c : round_ * c]].sort().values
        free = pool[~torch.isin(self.data.qm9_index[pool], asked)]
        n = self.config.pool_subsample
        if n and free.numel() > n:
            gen = round_generator(self.config.seed, round_, "subsample")
            free = free[torch.randperm(free.numel(), generator=gen)[:n]].sort().values
        return free

    def choose(self, round_: int, candidates: Tensor, pred: Prediction) -> pd.DataFrame:
        if self.multi:
            return self.choose_pairs(round_, candidates, pred)
        labelled_emb = None
        if "embedding" in ACQUISITIONS[self.acquisition].needs:
            ok_rows = self.data.rows_of(self.labelled.ok["qm9_index"].to_numpy())
            labelled_emb = self.surrogate.predict(self.data, ok_rows).embedding
        k = min(self.config.batch_size, candidates.numel())
        gen = round_generator(self.config.seed, round_, "select")
        sel = select(self.acquisition, pred, k, generator=gen, labelled_embedding=labelled_emb)
        return self.request_frame(candidates[sel.index], sel.score, pred, sel.index)

    def choose_pairs(self, round_: int, candidates: Tensor, pred: Prediction) -> pd.DataFrame:
        """Multi-fidelity: (molecule, fidelity) pairs within the round's cost."""
        from al.acquisition.multifidelity import select_pairs

        cfg = self.config
        budget = cfg.round_cost or cfg.batch_size * float(self.costs[-1])
        options = {"cheap_share": cfg.cheap_share} if cfg.mf_acquisition == "cheap_first" else {}
        gen = round_generator(cfg.seed, round_, "select")
        sel = select_pairs(
            cfg.mf_acquisition, pred, self.bought(candidates), self.costs, budget,
            generator=gen, **options,
        )  # fmt: skip
        assert pred.fidelity_members is not None
        chosen = pred.fidelity_members[:, sel.index, sel.fidelity]  # [K, m]
        frame = self.request_frame(candidates[sel.index], sel.score, None, fidelity=sel.fidelity)
        frame["pred_mean"] = chosen.mean(0).double().numpy()
        frame["pred_std"] = chosen.std(0).double().numpy()
        return frame

    def bought(self, candidates: Tensor) -> Tensor:
        """``[n, D]`` bool: which (candidate, fidelity) pairs were asked for already."""
        table = self.labelled.table
        out = torch.zeros(candidates.numel(), len(self.oracles), dtype=torch.bool)
        if not len(table):
            return out
        where = {int(q): i for i, q in enumerate(self.data.qm9_index[candidates].tolist())}
        for q, name in zip(table["qm9_index"], table["oracle"], strict=True):
            i = where.get(int(q))
            if i is not None:
                out[i, self.fidelity_of[name]] = True
        return out

    def asked_high(self) -> np.ndarray:
        """QM9 indices no longer offered: asked for at the highest (or only) fidelity."""
        table = self.labelled.table
        if self.multi and len(table):
            table = table[table["oracle"] == self.oracles[-1].name]
        return np.array(table["qm9_index"], dtype=np.int64)

    def request_frame(
        self,
        rows: Tensor,
        score: Tensor | None,
        pred: Prediction | None,
        pred_index: Tensor | None = None,
        fidelity: Tensor | None = None,
    ) -> pd.DataFrame:
        """One row per request; ``fidelity`` (``[n]``) picks the oracle (default: the last)."""
        n = rows.numel()
        nan = np.full(n, np.nan)
        frame = pd.DataFrame({"qm9_index": self.data.qm9_index[rows].numpy()})
        last = len(self.oracles) - 1
        frame["fidelity"] = fidelity.numpy() if fidelity is not None else np.full(n, last)
        frame["score"] = score.double().numpy() if score is not None else nan
        if pred is not None and pred_index is not None:
            frame["pred_mean"] = pred.mean[pred_index].double().numpy()
            std = pred.std[pred_index].double().numpy() if pred.std is not None else nan
            frame["pred_std"] = std
        else:
            frame["pred_mean"], frame["pred_std"] = nan, nan
        return frame

    def label(self, round_: int, request: pd.DataFrame, pred: Prediction | None = None) -> None:
        """Ask the oracles, record every row (failures too) on the tracking server at once."""
        t0 = time.perf_counter()
        request = request.reset_index(drop=True)
        parts = []
        for d, rows in request.groupby("fidelity", sort=True).groups.items():
            result = self.oracles[int(d)].label(request.loc[rows, "qm9_index"].to_numpy(np.int64))
            parts.append(result.to_frame().set_axis(rows))
        self.timings["label"] = time.perf_counter() - t0
        frame = pd.concat(parts).sort_index()
        frame["round"] = round_
        for col in ("score", "pred_mean", "pred_std"):
            frame[col] = request[col].to_numpy()
        self.run.log_queried(round_, frame)
        log.info("event=labels_paid round=%d n=%d cost=%g", round_, len(frame), frame["cost"].sum())
        self.labelled.add(frame[list(tracking.QUERIED_COLUMNS)])
        n_failed = int((frame["status"] != "ok").sum())
        if n_failed:
            log.warning("event=labels_failed round=%d n_failed=%d", round_, n_failed)

    def training_set(self, round_: int) -> tuple[MolecularData, Tensor, Tensor]:
        """The data with oracle labels in ``y`` (``[n_mol, D]`` with NaN where a molecule
        lacks a fidelity, when there are several), and a seeded train/validation split."""
        ok = self.labelled.ok
        label = torch.tensor(ok["label"].to_numpy(np.float64))
        labelled_rows = self.data.rows_of(ok["qm9_index"].to_numpy(np.int64))
        if self.multi:
            y = torch.full((self.data.y.numel(), len(self.oracles)), float("nan"))
            fid = torch.tensor([self.fidelity_of[o] for o in ok["oracle"]], dtype=torch.int64)
            y[labelled_rows, fid] = label.to(y)
            y = y.to(self.data.y.dtype)
        else:
            y = torch.full_like(self.data.y, float("nan"))
            y[labelled_rows] = label
        rows = labelled_rows.unique() if self.multi else labelled_rows
        gen = round_generator(self.config.seed, round_, "validation")
        rows = rows[torch.randperm(rows.numel(), generator=gen)]
        n_val = round(self.config.val_fraction * rows.numel())
        if self.config.val_fraction > 0:
            n_val = max(1, n_val)
        return replace(self.data, y=y), rows[n_val:], rows[:n_val]

    def progress(self, round_: int) -> CampaignProgress:
        asked = torch.as_tensor(self.asked_high())
        left = int((~torch.isin(self.data.qm9_index[self.pool], asked)).sum())
        return CampaignProgress(
            round=round_,
            n_labelled=len(self.labelled.ok),
            n_requested=len(self.labelled.table),
            cost_spent=self.labelled.cost_spent,
            test_mae_history=list(self.mae_history),
            pool_left=left,
        )

    def timed(self, phase: str, fn: Callable[..., T], *args: object) -> T:
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings[phase] = time.perf_counter() - t0
        return out

    # --- logging -----------------------------------------------------------------------------
    def log_round_metrics(
        self, round_: int, report: dict[str, float], epochs: int, retrained: bool = True
    ) -> None:
        table = self.labelled.table
        this_round = table[table["round"] == round_]
        metrics = {
            CM.N_LABELLED: len(self.labelled.ok),
            CM.ROUND: round_,
            CM.COST_SPENT: self.labelled.cost_spent,
            CM.N_REQUESTED: len(table),
            CM.N_FAILED: int((table["status"] != "ok").sum()),
            CM.POOL_SCORED: self.timings.get("pool_scored", 0),
            CM.TEST_MAE: report["mae"],
            CM.TEST_RMSE: report["rmse"],
            CM.TEST_MAX_AE: report["max_ae"],
            CM.TEST_NLL: report.get("nll", float("nan")),
            CM.TEST_SPEARMAN: report.get("spearman_std_err", float("nan")),
            CM.TEST_MISCALIBRATION: report.get("miscalibration_area", float("nan")),
            CM.TEST_MEAN_STD: report.get("mean_std", float("nan")),
            CM.FIT_EPOCHS: epochs,
            CM.RETRAINED: int(retrained),
            CM.TRAINED_ON: self.trained_on,
            CM.TIME_FIT: self.timings.get("fit", 0.0),
        }
        if round_ > 0:
            metrics.update(
                {CM.TIME_SCORE: self.timings.get("score", 0.0),
                 CM.TIME_SELECT: self.timings.get("select", 0.0)}
            )  # fmt: skip
        metrics[CM.TIME_LABEL] = self.timings.get("label", 0.0)
        for oracle, n in table.loc[table["status"] == "ok", "oracle"].value_counts().items():
            metrics[CM.labels_from(str(oracle))] = int(n)
        metrics["round_cost"] = float(this_round["cost"].sum())
        tracking.log_metrics(metrics, step=len(self.labelled.ok), run_id=self.run.run_id)
        self.run.complete_round(round_)

    def log_round_artifacts(self, round_: int, pred: Prediction, history: list) -> None:
        """Into the active child run: curves, parity, std vs error, checkpoint, model."""
        target = self.data.y[self.test].numpy()
        tracking.log_figure(plots.training_curves(history), tracking.Artifacts.CURVES)
        figs = plots.campaign_figures(
            self.mae_history_with(pred), pred.mean.numpy(), _numpy(pred.std), target, round_
        )
        for fig, path in zip(figs, tracking.CAMPAIGN_PLOTS, strict=True):
            tracking.log_figure(fig, path)
        with tempfile.TemporaryDirectory(prefix="al-") as tmp:
            ckpt = save_checkpoint(
                self.surrogate.members(), Path(tmp) / "model.pt",
                meta={**self.surrogate.checkpoint_meta(), "round": round_,
                      "data_version": self.labelled.digest(),
                      "n_labelled": len(self.labelled.ok)},
            )  # fmt: skip
            mlflow.log_artifact(str(ckpt), Path(tracking.ROUND_CHECKPOINT).parent.as_posix())
            log_pyfunc_model(ckpt, tracking.Artifacts.MODEL_NAME)

    def mae_history_with(self, pred: Prediction) -> list[tuple[int, float]]:
        counts = self.labelled_counts_per_round()
        mae = float((pred.mean - self.data.y[self.test]).abs().mean())
        return list(zip(counts, [*self.mae_history, mae], strict=False))

    def labelled_counts_per_round(self) -> list[int]:
        t = self.labelled.table
        ok = t[t["status"] == "ok"].groupby("round").size().sort_index().cumsum()
        return [int(v) for v in ok.to_numpy()]

    # --- resume --------------------------------------------------------------------------------
    def restore(self) -> tuple[int, bool]:
        """Read back what the tracking server holds.

        Returns ``(round, fitted)``: the last round whose labels are in (-1: nothing yet)
        and whether that round's fit and evaluation were completed.
        """
        rounds = self.run.queried_rounds()
        if not rounds:
            return -1, False
        for r in rounds:
            self.labelled.add(self.run.read_queried(r))
        self.run.close_stale_children()
        last, completed = rounds[-1], self.run.completed_round()
        self.mae_history = self.run.metric_history(CM.TEST_MAE)[: completed + 1]
        log.info(
            "event=resume run_id=%s queried_rounds=%d completed_round=%d labels=%d",
            self.run.run_id, len(rounds), completed, len(self.labelled.table),
        )  # fmt: skip
        if completed < last:
            return last, False
        with tempfile.TemporaryDirectory(prefix="al-") as tmp:
            members, meta = load_checkpoint(self.run.download_checkpoint(last, Path(tmp)))
        self.surrogate.load_members(members)
        self.trained_on = int(meta.get("n_labelled", len(self.labelled.ok)))
        self.last_report = {
            key: self.run.metric_history(metric)[completed]
            for key, metric in (("mae", CM.TEST_MAE), ("rmse", CM.TEST_RMSE),
                                ("max_ae", CM.TEST_MAX_AE), ("nll", CM.TEST_NLL),
                                ("spearman_std_err", CM.TEST_SPEARMAN),
                                ("miscalibration_area", CM.TEST_MISCALIBRATION),
                                ("mean_std", CM.TEST_MEAN_STD))
        }  # fmt: skip
        return last, True


def _numpy(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.numpy()
