"""What a surrogate predicts for a set of molecules."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Prediction:
    """A surrogate's prediction for ``n`` molecules.

    Attributes:
        mean: predicted energy in eV, ``[n]`` (float64).
        std: predictive standard deviation in eV, ``[n]``, or None: calibrated, i.e. the
            spread of the members times the surrogate's validation-fitted ``std_scale``.
        embedding: molecule embeddings, ``[n, F]`` (float32), or None.
        members: per-member (ensemble) or per-pass (MC dropout) energies, ``[K, n]``, or None.
        fidelity_members: a multi-fidelity surrogate's energies at every fidelity (lowest
            first), ``[K, n, D]``, or None; ``mean``, ``std`` and ``members`` are then those
            of the highest fidelity (the last column).
        std_raw: the uncalibrated spread of the members, ``[n]``, or None (then ``std`` is
            raw too); ``std / std_raw`` is the surrogate's ``std_scale``.
    """

    mean: Tensor
    std: Tensor | None = None
    embedding: Tensor | None = None
    members: Tensor | None = None
    fidelity_members: Tensor | None = None
    std_raw: Tensor | None = None

    @classmethod
    def from_samples(
        cls, samples: Tensor, embedding: Tensor | None, std_scale: float = 1.0
    ) -> Prediction:
        """From member, head or pass energies ``[K, n]`` or, multi-fidelity, ``[K, n, D]``;
        ``std`` is their spread times ``std_scale``, ``std_raw`` the spread itself."""
        high = samples[..., -1] if samples.dim() == 3 else samples
        raw = high.std(0)
        return cls(
            mean=high.mean(0), std=raw * std_scale, embedding=embedding, members=high,
            fidelity_members=samples if samples.dim() == 3 else None, std_raw=raw,
        )  # fmt: skip

    def provides(self) -> frozenset[str]:
        """Names of the fields that are present: subset of mean, std, embedding, members."""
        names = ("mean", "std", "embedding", "members", "fidelity_members")
        return frozenset(n for n in names if getattr(self, n) is not None)

    def __len__(self) -> int:
        return int(self.mean.shape[0])
