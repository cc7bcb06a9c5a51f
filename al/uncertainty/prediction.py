"""What a surrogate predicts for a set of molecules."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Prediction:
    """A surrogate's prediction for ``n`` molecules.

    Attributes:
        mean: predicted energy in eV, ``[n]`` (float64).
        std: predictive standard deviation in eV, ``[n]``, or None.
        embedding: molecule embeddings, ``[n, F]`` (float32), or None.
        members: per-member (ensemble) or per-pass (MC dropout) energies, ``[K, n]``, or None.
        fidelity_members: a multi-fidelity surrogate's energies at every fidelity (lowest
            first), ``[K, n, D]``, or None; ``mean``, ``std`` and ``members`` are then those
            of the highest fidelity (the last column).
    """

    mean: Tensor
    std: Tensor | None = None
    embedding: Tensor | None = None
    members: Tensor | None = None
    fidelity_members: Tensor | None = None

    @classmethod
    def from_samples(cls, samples: Tensor, embedding: Tensor | None) -> Prediction:
        """From member or pass energies ``[K, n]`` or, multi-fidelity, ``[K, n, D]``."""
        high = samples[..., -1] if samples.dim() == 3 else samples
        return cls(
            mean=high.mean(0), std=high.std(0), embedding=embedding, members=high,
            fidelity_members=samples if samples.dim() == 3 else None,
        )  # fmt: skip

    def provides(self) -> frozenset[str]:
        """Names of the fields that are present: subset of mean, std, embedding, members."""
        names = ("mean", "std", "embedding", "members", "fidelity_members")
        return frozenset(n for n in names if getattr(self, n) is not None)

    def __len__(self) -> int:
        return int(self.mean.shape[0])
