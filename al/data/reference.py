"""Per-element reference energies: the composition fit with a fallback for absent elements.

A per-element linear fit (``target ~ composition @ c``, one coefficient per element H, C,
N, O, F) cannot say anything about an element none of its training molecules contain:
plain least squares leaves it at 0, which puts several eV of error on every molecule with
that element. :func:`fit_composition` gives such an element the packaged prior
(``al/data/composition_reference.json``: the composition-only fit of the DFT target over
the oracle split of the default split, written by :func:`composition_prior_record`) scaled
by the one factor that best maps the prior onto the fitted elements' coefficients: about
1 for the DFT target itself, about 0 for a Δ-learning residual, whose per-element part is
already in its baseline. It logs a warning naming the element.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import Tensor

from al.data.elements import ELEMENTS

log = logging.getLogger(__name__)

COMPOSITION_REFERENCE_FILE = "composition_reference.json"


@cache
def composition_prior() -> Tensor:
    """The packaged per-element reference of the DFT target, eV per atom, ``[5]`` (float64,
    columns in :data:`~al.data.elements.ELEMENTS` order)."""
    rec = json.loads(resources.files("al.data").joinpath(COMPOSITION_REFERENCE_FILE).read_text())
    coef = rec["coefficients_ev"]
    return torch.tensor([float(coef[s]) for s in ELEMENTS], dtype=torch.float64)


def fill_absent(coef: Tensor, present: Tensor, context: str = "") -> Tensor:
    """``coef`` (``[5]``) with the elements not ``present`` (``[5]`` bool) set from the prior.

    The prior is scaled by ``alpha = <c, p> / <p, p>`` over the present elements; with none
    present ``coef`` is returned as it is (a fit on nothing stays 0). Each filled element
    is logged.
    """
    if bool(present.all()) or not bool(present.any()):  # nothing absent, or nothing fitted
        return coef
    prior = composition_prior().to(coef)
    out = coef.clone()
    p = prior[present]
    alpha = float((coef[present] @ p) / (p @ p))
    out[~present] = alpha * prior[~present]
    symbols = list(ELEMENTS)
    for k in torch.nonzero(~present).flatten().tolist():
        log.warning(
            "event=element_absent element=%s fallback_ev=%.4f prior_scale=%.3f%s",
            symbols[k], float(out[k]), alpha, f" where={context}" if context else "",
        )  # fmt: skip
    return out


def fit_composition(composition: Tensor, y: Tensor, context: str = "") -> Tensor:
    """Per-element least-squares coefficients ``[5]`` (float64) of ``y ~ composition @ c``.

    Args:
        composition: element counts, ``[n, 5]``.
        y: targets in eV, ``[n]``; rows with a non-finite target are left out.
        context: a word for the warning about an absent element (who fitted).

    An element absent from the (finite) rows gets the prior's fallback (:func:`fill_absent`).
    """
    A, b = composition.double().cpu(), y.double().cpu().reshape(-1)
    keep = torch.isfinite(b)
    A, b = A[keep], b[keep]
    present = A.sum(0) > 0
    coef = torch.zeros(A.shape[1], dtype=torch.float64)
    if b.numel() and bool(present.any()):
        coef[present] = torch.linalg.lstsq(A[:, present], b[:, None]).solution[:, 0]
    return fill_absent(coef, present, context)


def composition_prior_record(composition: np.ndarray, target_ev: np.ndarray) -> dict[str, Any]:
    """The fields of ``composition_reference.json``: least squares of ``target_ev`` (``[m]``)
    on ``composition`` (``[m, 5]``), with its MAE on those rows."""
    c, *_ = np.linalg.lstsq(composition, target_ev, rcond=None)
    return {
        "coefficients_ev": {s: float(v) for s, v in zip(ELEMENTS, c, strict=True)},
        "n_fit": len(target_ev),
        "fit_mae_ev": float(np.abs(composition @ c - target_ev).mean()),
    }
