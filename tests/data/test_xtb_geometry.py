"""``geometry=xtb``: QM9 at GFN2-xTB geometries from its SMILES (real RDKit, ASE and tblite
on QM9's first molecules), labels kept, the split restricted, a store of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from al.baselines.base import XTBBaseline
from al.data import conformers, xtb_geometry
from al.data.config import DataConfig
from al.data.conformers import compute_geometries, store
from al.data.load import load_data
from al.data.xtb_geometry import NOT_COMPUTED, restrict_splits, xtb_geometry_data

N = 12  # QM9's first molecules: up to 3 heavy atoms, a fraction of a second each


@pytest.fixture
def geometries(qm9, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The GFN2-xTB geometries of QM9's first ``N`` molecules in the test's own store, and
    the derived data cached in the test's folder (QM9's own cache is read as usual)."""
    monkeypatch.setattr(store, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(xtb_geometry, "cache_dir", lambda: tmp_path)
    compute_geometries(qm9.smiles[:N], workers=1, show_progress=False)
    return tmp_path / "geometries"


def test_qm9_at_xtb_geometries_keeps_its_labels_and_split(qm9, geometries, monkeypatch) -> None:
    data, counts = xtb_geometry_data(qm9)
    assert counts["ok"] == len(data) and counts[NOT_COMPUTED] == len(qm9) - N
    assert 0 < len(data) <= N and data.geometry.startswith("xtb:")
    rows = qm9.rows_of(data.qm9_index)
    torch.testing.assert_close(data.y, qm9.y[rows])  # the labels stay QM9's DFT H298
    torch.testing.assert_close(data.composition(), qm9.composition(rows))  # same molecules
    for i, row in enumerate(rows.tolist()):  # other positions: the cheap geometry
        a, b = int(qm9.ptr[row]), int(qm9.ptr[row + 1])
        mine = data.pos[int(data.ptr[i]) : int(data.ptr[i + 1])]
        assert mine.shape == (b - a, 3) and not torch.allclose(mine, qm9.pos[a:b], atol=1e-2)

    # read back from its cache, the store untouched
    def refuse(self):
        raise AssertionError("the store was read again")

    monkeypatch.setattr(conformers.store.GeometryStore, "read", refuse)
    again, counts_again = xtb_geometry_data(qm9)
    assert torch.equal(again.pos, data.pos) and counts_again == counts

    # the same split as geometry=dft, restricted to the molecules with a geometry
    full, split = load_data(DataConfig())[1], load_data(DataConfig(geometry="xtb"))[1]
    assert set(split.test) == set(full.test) & set(data.qm9_index.tolist())
    assert set(split.pool) == set(full.pool) & set(data.qm9_index.tolist())
    assert restrict_splits(full, data.qm9_index.numpy()).digest() == split.digest()
    # its counterpart: QM9's own positions on the same molecules and split
    dft_data, dft_split = load_data(DataConfig(geometry="dft_on_xtb_set"))
    assert dft_split.digest() == split.digest() and torch.equal(dft_data.pos, qm9.pos)

    # a baseline's energies at these geometries are kept apart from QM9's own
    base = XTBBaseline(cache=geometries.parent)
    qm9_store = base.path
    base.use_store_of(data)
    assert base.path != qm9_store and data.structure_digest() in base.path.name
    assert np.isfinite(base.values(data, torch.arange(len(data))).numpy()).all()
