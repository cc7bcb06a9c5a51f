"""Single- and multi-fidelity selection: what a campaign asks its oracles for.

Chosen once, from the number of oracles (:func:`build_selection`):

:class:`SingleFidelity`
    One oracle. A round asks for ``batch_size`` molecules picked by a single-fidelity
    acquisition function (:mod:`al.acquisition.functions`); a molecule asked for once is
    never offered again; the training targets are ``[n_mol]``.
:class:`MultiFidelity`
    ``D`` oracles, cheapest first, the last one the target. Round 0 asks for every initial
    molecule at every fidelity; later rounds buy (molecule, fidelity) pairs within the
    round's cost (:mod:`al.acquisition.multifidelity`); a molecule is closed once its
    highest fidelity was asked for; the training targets are ``[n_mol, D]`` with NaN where a
    molecule lacks a fidelity.

Both write request frames: one row per label request with columns ``qm9_index, fidelity,
score, pred_mean, pred_std, role`` (``fidelity`` indexes the oracle list; ``role`` is
``train``, or ``validation`` for the campaign's validation set, asked for in round 0 at the
target fidelity and never trained on).

Both keep within an :class:`~al.loop.stopping.Allowance`, what is left of the label and cost
budgets: the initial set and every round are clipped to it, so that a campaign never
spends more than its budgets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from al.acquisition.functions import Acquisition, select
from al.acquisition.functions import resolve as resolve_acquisition
from al.acquisition.multifidelity import MF_ACQUISITIONS, MFAcquisition, PairSelection, select_pairs
from al.baselines import baseline_of
from al.data.molecules import MolecularData
from al.loop.config import CampaignConfig
from al.loop.ledger import Labelled
from al.loop.seeds import round_generator
from al.loop.stopping import UNLIMITED, Allowance, affordable
from al.oracles import Oracle
from al.tracking.names import ROLE_TRAIN, ROLE_VALIDATION
from al.uncertainty import Prediction, Surrogate

log = logging.getLogger(__name__)


class Selection:
    """The parts shared by both selections: request frames and which pairs were bought.

    Args:
        data: the molecules (``qm9_index [n_mol]``, ``y [n_mol]``).
        oracles: the labellers, cheapest first; the last one is the target fidelity.
        config: the campaign settings (``seed``, ``batch_size``, multi-fidelity budget).
        acquisition: the acquisition function or its registry name, resolved here once
            (:meth:`resolve`; single-fidelity: :data:`al.acquisition.ACQUISITIONS`,
            multi-fidelity: ``MF_ACQUISITIONS``); an unknown name raises ``ValueError``.
        surrogate: the campaign's surrogate (embeds the labelled set when the acquisition
            needs it).
    """

    def __init__(
        self,
        data: MolecularData,
        oracles: Sequence[Oracle],
        config: CampaignConfig,
        acquisition: str | Acquisition | MFAcquisition,
        surrogate: Surrogate | None = None,
    ) -> None:
        self.data, self.oracles, self.config = data, list(oracles), config
        self.acquisition, self.surrogate = self.resolve(acquisition), surrogate
        self.fidelity_of = {o.name: d for d, o in enumerate(oracles)}
        #: ``[D]`` cost per label of each fidelity
        self.costs = torch.tensor([o.cost_per_label for o in oracles], dtype=torch.float64)

    @staticmethod
    def resolve(acquisition: str | Acquisition | MFAcquisition) -> Any:  # pragma: no cover
        """The registry entry of this selection's acquisition family."""
        raise NotImplementedError

    @property
    def n_fidelities(self) -> int:
        return len(self.oracles)

    @property
    def baseline_each(self) -> float:
        """What a Δ-learning baseline charges for one new molecule (0 without one): a
        label's cost for the budgets is the oracle's plus this."""
        baseline = baseline_of(self.surrogate) if self.surrogate is not None else None
        return baseline.cost_per_molecule if baseline is not None else 0.0

    @property
    def scores_pool(self) -> bool:
        """Whether :meth:`choose` needs the surrogate's prediction for every candidate
        (False for an acquisition that needs nothing from it, e.g. ``random``)."""
        return True

    def request_frame(
        self,
        rows: Tensor,
        score: Tensor | None = None,
        pred: Prediction | None = None,
        pred_index: Tensor | None = None,
        fidelity: Tensor | None = None,
    ) -> pd.DataFrame:
        """One row per request for the data rows ``rows`` (``[n]``).

        ``score`` (``[n]``) is the acquisition value; ``pred`` with ``pred_index`` (``[n]``
        rows into ``pred``) gives ``pred_mean``/``pred_std``; ``fidelity`` (``[n]``) picks
        the oracle (default: the last). Missing values are NaN.
        """
        n = rows.numel()
        nan = np.full(n, np.nan)
        frame = pd.DataFrame({"qm9_index": self.data.qm9_index[rows].numpy()})
        last = self.n_fidelities - 1
        frame["fidelity"] = fidelity.numpy() if fidelity is not None else np.full(n, last)
        frame["score"] = score.double().numpy() if score is not None else nan
        if pred is not None and pred_index is not None:
            frame["pred_mean"] = pred.mean[pred_index].double().numpy()
            std = pred.std[pred_index].double().numpy() if pred.std is not None else nan
            frame["pred_std"] = std
        else:
            frame["pred_mean"], frame["pred_std"] = nan, nan
        frame["role"] = ROLE_TRAIN
        return frame

    def bought(self, candidates: Tensor, labelled: Labelled) -> Tensor:
        """``[n, D]`` bool: which (candidate, fidelity) pairs were asked for already.

        Args:
            candidates: ``[n]`` data rows.
            labelled: every request so far.
        """
        table = labelled.table
        out = torch.zeros(candidates.numel(), self.n_fidelities, dtype=torch.bool)
        if not len(table):
            return out
        where = {int(q): i for i, q in enumerate(self.data.qm9_index[candidates].tolist())}
        for q, name in zip(table["qm9_index"], table["oracle"], strict=True):
            i = where.get(int(q))
            if i is not None:
                out[i, self.fidelity_of[name]] = True
        return out

    def within_budget(self, round_: int, candidates: Tensor, left: Allowance) -> Tensor:
        """The ``[n]`` candidate rows to score, so that the Δ-learning baseline scoring
        charges leaves the cost budget room for one label (:func:`affordable`; a warning
        line when some are left out)."""
        baseline = baseline_of(self.surrogate) if self.surrogate is not None else None
        if baseline is None:
            return candidates
        unpaid = torch.as_tensor(baseline.unpaid(self.data.qm9_index[candidates].numpy()))
        gen = round_generator(self.config.seed, round_, "budget clip")
        keep = affordable(unpaid, left, self.baseline_each, float(self.costs.min()), gen)
        if not bool(keep.all()):
            log.warning(
                "event=pool_clipped_to_budget round=%d scored=%d of %d: scoring pays the "
                "baseline of each new molecule", round_, int(keep.sum()), candidates.numel(),
            )  # fmt: skip
        return candidates[keep]

    def validation_request(self, rows: Tensor, role: str = ROLE_VALIDATION) -> pd.DataFrame:
        """Round 0's requests for the validation rows ``rows`` (``[v]``): the target (last)
        fidelity, role ``validation`` (or ``role``: ``heldout``, a pool campaign's held-out
        set, bought the same way)."""
        frame = self.request_frame(rows)
        frame["role"] = role
        return frame

    def validation_targets(self, labelled: Labelled, y: Tensor) -> Tensor:
        """The validation rows ``[v]`` (successful labels), their labels written into ``y``
        (``[n_mol]``, or the target column of ``[n_mol, D]``) in place."""
        val = labelled.validation_ok
        rows = self.data.rows_of(val["qm9_index"].to_numpy(np.int64))
        label = torch.tensor(val["label"].to_numpy(np.float64)).to(y.dtype)
        if y.dim() > 1:
            y[rows, -1] = label
        else:
            y[rows] = label
        return rows

    def nothing_fits(self, left: Allowance) -> str | None:
        """A reason to stop when not even the cheapest label fits what is ``left`` of the
        budgets, else None."""
        cheapest = float(self.costs.min())
        if left.count(cheapest) >= 1:
            return None
        return f"budget: nothing more fits (labels left {left.labels:g}, cost left {left.cost:g})"

    # --- what each selection defines ----------------------------------------------------
    def initial_request(
        self, rows: Tensor, left: Allowance = UNLIMITED
    ) -> pd.DataFrame:  # pragma: no cover - abstract
        """Round 0's requests for the random initial rows ``rows`` (``[n]``), clipped to what
        is ``left`` of the budgets (a prefix of ``rows``)."""
        raise NotImplementedError

    def choose(
        self,
        round_: int,
        candidates: Tensor,
        pred: Prediction | None,
        labelled: Labelled,
        left: Allowance = UNLIMITED,
    ) -> pd.DataFrame:  # pragma: no cover - abstract
        """The requests of acquisition round ``round_`` among the ``[n]`` candidate rows,
        within what is ``left`` of the budgets; ``pred`` is None when :attr:`scores_pool` is
        False."""
        raise NotImplementedError

    def closed(self, labelled: Labelled) -> np.ndarray:  # pragma: no cover - abstract
        """QM9 indices never to be offered again, ``[c]`` int64."""
        raise NotImplementedError

    def training_targets(
        self, labelled: Labelled
    ) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """The training target ``y`` for every data row and the labelled rows ``[m]``."""
        raise NotImplementedError

    def _labelled_rows(self, labelled: Labelled) -> tuple[Tensor, Tensor, pd.DataFrame]:
        """Rows ``[m]`` and labels ``[m]`` (float64) of the successful requests, in order."""
        ok = labelled.ok
        label = torch.tensor(ok["label"].to_numpy(np.float64))
        return self.data.rows_of(ok["qm9_index"].to_numpy(np.int64)), label, ok


class SingleFidelity(Selection):
    """One oracle: ``batch_size`` molecules a round, chosen by an acquisition function."""

    acquisition: Acquisition

    @staticmethod
    def resolve(acquisition: str | Acquisition | MFAcquisition) -> Acquisition:
        """A single-fidelity acquisition (:data:`~al.acquisition.ACQUISITIONS`)."""
        if isinstance(acquisition, MFAcquisition):
            raise ValueError(f"{acquisition.name!r} is a multi-fidelity acquisition")
        return resolve_acquisition(acquisition)

    def initial_request(self, rows: Tensor, left: Allowance = UNLIMITED) -> pd.DataFrame:
        """Round 0: the rows of ``rows`` (``[n]``) from the oracle, as many as fit ``left``."""
        k = min(rows.numel(), left.count(float(self.costs[-1]) + self.baseline_each))
        return self.request_frame(rows[:k])

    @property
    def scores_pool(self) -> bool:
        return bool(self.acquisition.needs)

    def choose(
        self,
        round_: int,
        candidates: Tensor,
        pred: Prediction | None,
        labelled: Labelled,
        left: Allowance = UNLIMITED,
    ) -> pd.DataFrame:
        """The round's requests: ``k`` of the ``[n]`` candidate rows, with ``k =
        min(batch_size, n, labels left, floor(cost left / cost per label))``.

        ``pred`` is the surrogate's prediction for the candidates (``mean [n]``...), or None
        for an acquisition that needs none (:attr:`scores_pool`): then only the chosen
        molecules are predicted, for the ``pred_mean``/``pred_std`` columns. The labelled
        molecules' embeddings are computed only when the acquisition needs them.
        """
        labelled_emb = None
        if "embedding" in self.acquisition.needs:
            assert self.surrogate is not None, "this acquisition needs the surrogate"
            ok_rows = self.data.rows_of(labelled.ok["qm9_index"].to_numpy())
            labelled_emb = self.surrogate.predict(self.data, ok_rows).embedding
        each = float(self.costs[-1]) + self.baseline_each  # a chosen molecule's baseline too
        k = min(self.config.batch_size, candidates.numel(), left.count(each))
        if candidates.numel() < self.config.batch_size:
            log.warning(
                "event=batch_clipped round=%d batch_size=%d candidates=%d: only the %d "
                "candidates offered can be asked for", round_, self.config.batch_size,
                candidates.numel(), candidates.numel(),
            )  # fmt: skip
        gen = round_generator(self.config.seed, round_, "select")
        # an unscored pool: the acquisition reads only its size (``len(pred)``)
        offered = pred if pred is not None else Prediction(torch.zeros(candidates.numel()))
        sel = select(self.acquisition, offered, k, generator=gen, labelled_embedding=labelled_emb)
        index = sel.index
        if pred is None and self.surrogate is not None and k > 0:
            pred = self.surrogate.predict(self.data, candidates[sel.index])
            index = torch.arange(k)
        return self.request_frame(candidates[sel.index], sel.score, pred, index)

    def closed(self, labelled: Labelled) -> np.ndarray:
        """QM9 indices no longer offered: every molecule asked for, ``[c]`` int64."""
        return np.array(labelled.table["qm9_index"], dtype=np.int64)

    def training_targets(self, labelled: Labelled) -> tuple[Tensor, Tensor]:
        """``y [n_mol]`` with the oracle labels (NaN elsewhere) and the labelled rows ``[m]``
        in request order."""
        rows, label, _ = self._labelled_rows(labelled)
        y = torch.full_like(self.data.y, float("nan"))
        y[rows] = label
        return y, rows


class MultiFidelity(Selection):
    """Several oracles: (molecule, fidelity) pairs within a round's cost."""

    acquisition: MFAcquisition

    @staticmethod
    def resolve(acquisition: str | Acquisition | MFAcquisition) -> MFAcquisition:
        """A multi-fidelity acquisition (``MF_ACQUISITIONS``)."""
        if isinstance(acquisition, MFAcquisition):
            return acquisition
        if isinstance(acquisition, Acquisition):
            raise ValueError(f"{acquisition.name!r} is a single-fidelity acquisition")
        return MF_ACQUISITIONS.get(acquisition)

    def initial_request(self, rows: Tensor, left: Allowance = UNLIMITED) -> pd.DataFrame:
        """Round 0: rows of ``rows`` (``[n]``) at every fidelity, so that the surrogate sees
        how the fidelities relate from the start (``D * m`` requests); ``m <= n`` molecules,
        as many as fit ``left`` at the cost of all fidelities together."""
        m = min(rows.numel(), left.count(float(self.costs.sum()), self.n_fidelities))
        rows = rows[:m]
        frames = [
            self.request_frame(rows, fidelity=torch.full_like(rows, d))
            for d in range(self.n_fidelities)
        ]
        return pd.concat(frames, ignore_index=True)

    def choose(
        self,
        round_: int,
        candidates: Tensor,
        pred: Prediction,
        labelled: Labelled,
        left: Allowance = UNLIMITED,
    ) -> pd.DataFrame:
        """Pairs chosen by the multi-fidelity acquisition for the ``[n]`` candidates,
        spending at most ``min(round_cost, cost left)`` (``round_cost`` defaults to
        ``batch_size`` x the highest cost), and no more pairs than labels are left (the
        first ones chosen).

        ``pred.fidelity_members`` (``[K, n, D]``) gives each pair's mean and std.
        """
        cfg = self.config
        budget = min(cfg.round_cost or cfg.batch_size * float(self.costs[-1]), left.cost)
        options: dict[str, object] = {}  # what the acquisition declares it takes
        if "cheap_share" in self.acquisition.options:
            options["cheap_share"] = cfg.cheap_share
        if "labels" in self.acquisition.options:  # e.g. the fidelities' discrepancy noise
            y, rows = self.training_targets(labelled)
            options["labels"] = y[rows]  # [m, D], NaN where a molecule lacks a fidelity
        gen = round_generator(cfg.seed, round_, "select")
        sel = select_pairs(
            self.acquisition, pred, self.bought(candidates, labelled), self.costs, budget,
            generator=gen, **options,
        )  # fmt: skip
        n = left.count(0.0)
        if n < len(sel):
            sel = PairSelection(sel.index[:n], sel.fidelity[:n], sel.score[:n])
        assert pred.fidelity_members is not None
        chosen = pred.fidelity_members[:, sel.index, sel.fidelity]  # [K, m]
        frame = self.request_frame(candidates[sel.index], sel.score, fidelity=sel.fidelity)
        frame["pred_mean"] = chosen.mean(0).double().numpy()
        frame["pred_std"] = chosen.std(0).double().numpy()
        return frame

    def closed(self, labelled: Labelled) -> np.ndarray:
        """QM9 indices no longer offered: asked for at the highest fidelity, ``[c]`` int64."""
        table = labelled.table
        if len(table):
            table = table[table["oracle"] == self.oracles[-1].name]
        return np.array(table["qm9_index"], dtype=np.int64)

    def training_targets(self, labelled: Labelled) -> tuple[Tensor, Tensor]:
        """``y [n_mol, D]`` with each fidelity's labels (NaN where a molecule lacks one) and
        the labelled rows ``[m]`` (unique, sorted)."""
        rows, label, ok = self._labelled_rows(labelled)
        y = torch.full((self.data.y.numel(), self.n_fidelities), float("nan"))
        fid = torch.tensor([self.fidelity_of[o] for o in ok["oracle"]], dtype=torch.int64)
        y[rows, fid] = label.to(y)
        return y.to(self.data.y.dtype), rows.unique()


def build_selection(
    data: MolecularData,
    oracles: Sequence[Oracle],
    config: CampaignConfig,
    acquisition: str | Acquisition | MFAcquisition,
    surrogate: Surrogate | None = None,
) -> Selection:
    """Multi-fidelity selection for several oracles, single-fidelity for one.

    ``acquisition``: the acquisition function, or its registry name (single-fidelity:
    :data:`~al.acquisition.ACQUISITIONS`, multi-fidelity: ``MF_ACQUISITIONS``), resolved
    once by the selection; an unknown name raises ``ValueError`` (one line).
    """
    if not oracles:
        raise ValueError("a campaign needs at least one oracle")
    cls = MultiFidelity if len(oracles) > 1 else SingleFidelity
    return cls(data, oracles, config, acquisition, surrogate)
