"""Tests of the data layer: QM9 loading and caching, splits, radius graphs, the PyG source."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.data import Data, InMemoryDataset

from al.data import (
    MolecularData,
    SplitConfig,
    Splits,
    cache_dir,
    load_qm9,
    make_splits,
    radius_graph,
)
from al.data.cache import CACHE_ENV
from al.data.molecules import MAX_QM9_INDEX
from al.data.pyg_source import H_ATOM, PROCESSED_FILE, from_pyg_data, load_pyg_qm9
from al.data.qm9pack import N_MOLECULES, qm9pack_data_dir

METHANE_H_ATOM_EV = -17.3897
#: QM9 indices used to build the small PyG data sets (given out of order on purpose).
PYG_INDICES = [212, 1, 23, 4, 1460]


@pytest.fixture(scope="session")
def qm9() -> MolecularData:
    """All of QM9 from the default source, through the normal on-disk cache."""
    return load_qm9()


def assert_same_data(a: MolecularData, b: MolecularData) -> None:
    for name in ("z", "pos", "ptr", "y", "qm9_index"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.dtype == tb.dtype, name
        assert torch.equal(ta, tb), name
    assert a.smiles == b.smiles


# --------------------------------------------------------------------------- the data set


def test_shapes_and_dtypes(qm9: MolecularData) -> None:
    assert len(qm9) == N_MOLECULES == 130_831
    n_atoms = qm9.z.numel()
    assert qm9.z.dtype == torch.int64
    assert qm9.pos.dtype == torch.float32 and qm9.pos.shape == (n_atoms, 3)
    assert qm9.ptr.dtype == torch.int64 and qm9.ptr.shape == (len(qm9) + 1,)
    assert qm9.y.dtype == torch.float64 and qm9.y.shape == (len(qm9),)
    assert qm9.qm9_index.dtype == torch.int64 and qm9.qm9_index.shape == (len(qm9),)
    assert len(qm9.smiles) == len(qm9)
    assert qm9.source == "qm9pack"


def test_methane_target(qm9: MolecularData) -> None:
    row = int(qm9.rows_of([1])[0])
    assert row == 0
    assert abs(float(qm9.y[row]) - METHANE_H_ATOM_EV) < 1e-4
    assert qm9.smiles[row] == "C"


def test_index_sorted_unique(qm9: MolecularData) -> None:
    idx = qm9.qm9_index
    assert bool((idx[1:] > idx[:-1]).all())
    assert int(idx[0]) >= 1 and int(idx[-1]) <= MAX_QM9_INDEX


def test_ptr_consistent(qm9: MolecularData) -> None:
    assert int(qm9.ptr[0]) == 0
    assert int(qm9.ptr[-1]) == qm9.z.numel() == qm9.pos.shape[0]
    n_atoms = qm9.n_atoms
    assert bool((n_atoms >= 1).all()) and int(n_atoms.max()) <= 29
    assert torch.equal(torch.cumsum(n_atoms, 0), qm9.ptr[1:])


def test_elements_and_positions(qm9: MolecularData) -> None:
    assert set(torch.unique(qm9.z).tolist()) == {1, 6, 7, 8, 9}
    assert not bool(torch.isnan(qm9.pos).any())
    assert bool(torch.isfinite(qm9.pos).all())
    assert bool(torch.isfinite(qm9.y).all())


# ------------------------------------------------------------------- raw CSV number formats

#: A number written with a trailing dot and no digits after it: "0." or "1.".
TRUNCATED = re.compile(r"(?<![\d.eE+-])-?\d+\.(?=[,\]])")
E_NOTATION = re.compile(r"\d[eE][-+]?\d")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@pytest.fixture(scope="module")
def odd_rows() -> pd.DataFrame:
    """A few rows of qm9pack's first CSV part with truncated or E-notation coordinates."""
    part = sorted(qm9pack_data_dir().glob("qm9_part*.csv"))[0]
    df = pd.read_csv(part, usecols=["Index", "N_atoms", "XYZ_Ang"], engine="pyarrow")
    truncated = df[df["XYZ_Ang"].str.contains(TRUNCATED)].head(3)
    e_notation = df[df["XYZ_Ang"].str.contains(E_NOTATION)].head(3)
    assert len(truncated) == 3, "expected rows with truncated numbers such as '0.'"
    assert len(e_notation) == 3, "expected rows with E-notation numbers"
    return pd.concat([truncated, e_notation], ignore_index=True)


def test_odd_number_formats_parse(qm9: MolecularData, odd_rows: pd.DataFrame) -> None:
    rows = qm9.rows_of(odd_rows["Index"].tolist())
    for (_, rec), row in zip(odd_rows.iterrows(), rows.tolist(), strict=True):
        expected = np.array([float(s) for s in NUMBER.findall(rec["XYZ_Ang"])], np.float32)
        assert expected.size == 3 * rec["N_atoms"]
        start, stop = int(qm9.ptr[row]), int(qm9.ptr[row + 1])
        assert stop - start == rec["N_atoms"]
        np.testing.assert_array_equal(qm9.pos[start:stop].numpy().reshape(-1), expected)


# ------------------------------------------------------------------------------- the cache


def test_cache_written_once_and_reloaded(qm9: MolecularData, tmp_path: Path) -> None:
    first = load_qm9(cache=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".pt"), files
    assert not list(tmp_path.glob("*.tmp"))
    second = load_qm9(cache=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert_same_data(first, second)
    assert_same_data(first, qm9)
    assert first.digest() == second.digest() == qm9.digest()


def test_cache_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "al-cache"))
    assert cache_dir() == tmp_path / "al-cache"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "al"


def test_unknown_source_raises() -> None:
    with pytest.raises(ValueError, match="unknown data source"):
        load_qm9(source="nope")
    with pytest.raises(ValueError, match="root"):
        load_qm9(source="pyg")


# ------------------------------------------------------------------------ lookups, batches


def removed_index(qm9: MolecularData) -> int:
    """The smallest QM9 index that the data set lacks."""
    present = np.zeros(MAX_QM9_INDEX + 1, dtype=bool)
    present[qm9.qm9_index.numpy()] = True
    return int(np.flatnonzero(~present[1:])[0]) + 1


def listed_indices(err: pytest.ExceptionInfo[KeyError]) -> set[int]:
    """The indices a ``rows_of`` ``KeyError`` lists before its explanation."""
    message = str(err.value.args[0])
    listed = message.split(":", 1)[1].split(";", 1)[0]
    return {int(s) for s in re.findall(r"-?\d+", listed)}


def test_rows_of(qm9: MolecularData) -> None:
    rows = torch.tensor([0, 5, 77, len(qm9) - 1])
    assert torch.equal(qm9.rows_of(qm9.qm9_index[rows]), rows)
    assert torch.equal(qm9.rows_of(qm9.qm9_index[rows].numpy()), rows)
    assert torch.equal(qm9.rows_of(qm9.qm9_index[rows].tolist()), rows)


@pytest.mark.parametrize("bad", [0, MAX_QM9_INDEX + 1, -3, "removed"])
def test_rows_of_missing_raises(qm9: MolecularData, bad: int | str) -> None:
    index = removed_index(qm9) if bad == "removed" else int(bad)
    with pytest.raises(KeyError) as err:
        qm9.rows_of([1, index, 2])
    assert listed_indices(err) == {index}


def test_removed_index_is_really_absent(qm9: MolecularData) -> None:
    index = removed_index(qm9)
    assert 1 < index < MAX_QM9_INDEX
    assert index not in set(qm9.qm9_index.tolist())


def test_batch(qm9: MolecularData) -> None:
    rows = torch.tensor([17, 0, 4242, 130_000, 5])
    z, pos, batch, y = qm9.batch(rows)
    counts = qm9.n_atoms[rows]
    n = int(counts.sum())
    assert z.shape == (n,) and pos.shape == (n, 3) and batch.shape == (n,)
    assert y.shape == (rows.numel(),)
    assert bool((batch[1:] >= batch[:-1]).all())
    assert torch.equal(torch.bincount(batch, minlength=rows.numel()), counts)
    assert torch.equal(y, qm9.y[rows])
    for k, r in enumerate(rows.tolist()):
        start, stop = int(qm9.ptr[r]), int(qm9.ptr[r + 1])
        assert torch.equal(z[batch == k], qm9.z[start:stop])
        assert torch.equal(pos[batch == k], qm9.pos[start:stop])


def test_subset(qm9: MolecularData) -> None:
    rows = torch.tensor([9, 3, 100_000])
    sub = qm9.subset(rows)
    assert len(sub) == 3
    assert torch.equal(sub.qm9_index, qm9.qm9_index[rows])
    assert torch.equal(sub.n_atoms, qm9.n_atoms[rows])
    assert int(sub.ptr[0]) == 0 and int(sub.ptr[-1]) == sub.z.numel()
    assert sub.smiles == [qm9.smiles[r] for r in rows.tolist()]
    for k, r in enumerate(rows.tolist()):
        assert torch.equal(sub.z[sub.ptr[k] : sub.ptr[k + 1]], qm9.z[qm9.ptr[r] : qm9.ptr[r + 1]])
        assert torch.equal(
            sub.pos[sub.ptr[k] : sub.ptr[k + 1]], qm9.pos[qm9.ptr[r] : qm9.ptr[r + 1]]
        )
    assert torch.equal(sub.y, qm9.y[rows])


def test_composition(qm9: MolecularData) -> None:
    methane = qm9.rows_of([1])
    assert qm9.composition(methane).tolist() == [[4.0, 1.0, 0.0, 0.0, 0.0]]
    rows = torch.arange(0, len(qm9), 997)
    comp = qm9.composition(rows)
    assert comp.shape == (rows.numel(), 5)
    assert torch.equal(comp.sum(1).long(), qm9.n_atoms[rows])


# ---------------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def all_index(qm9: MolecularData) -> np.ndarray:
    return qm9.qm9_index.numpy()


def test_splits_disjoint_and_cover(all_index: np.ndarray) -> None:
    config = SplitConfig(seed=0, n_test=10_000, n_oracle=50_000)
    s = make_splits(all_index, config)
    assert s.sizes() == {"test": 10_000, "oracle": 50_000, "pool": len(all_index) - 60_000}
    joined = np.concatenate([s.test, s.oracle, s.pool])
    assert np.unique(joined).size == joined.size
    np.testing.assert_array_equal(np.sort(joined), np.sort(all_index))
    for part in (s.test, s.oracle, s.pool):
        assert part.dtype == np.int64 and bool((np.diff(part) > 0).all())


def test_splits_deterministic(all_index: np.ndarray) -> None:
    a = make_splits(all_index, SplitConfig(seed=3, n_test=500, n_oracle=1000))
    b = make_splits(all_index, SplitConfig(seed=3, n_test=500, n_oracle=1000))
    c = make_splits(all_index, SplitConfig(seed=4, n_test=500, n_oracle=1000))
    assert a.digest() == b.digest()
    np.testing.assert_array_equal(a.test, b.test)
    assert a.digest() != c.digest()
    assert not np.array_equal(a.test, c.test)
    # The input order does not matter, only the set of indices.
    shuffled = np.random.default_rng(1).permutation(all_index)
    assert make_splits(shuffled, SplitConfig(seed=3, n_test=500, n_oracle=1000)).digest() == (
        a.digest()
    )


def test_splits_save_load(all_index: np.ndarray, tmp_path: Path) -> None:
    s = make_splits(all_index, SplitConfig(seed=1, n_test=100, n_oracle=200))
    path = s.save(tmp_path / "sub" / "splits.json")
    loaded = Splits.load(path)
    assert loaded.seed == 1 and loaded.digest() == s.digest()
    for name in ("test", "oracle", "pool"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(s, name))

    rec = json.loads(path.read_text())
    rec["digest"] = "0" * 16
    path.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="corrupt"):
        Splits.load(path)

    rec = json.loads(s.to_json())
    rec["test"][-1] = MAX_QM9_INDEX + 1  # an edited index list, digest left as it was
    path.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="corrupt"):
        Splits.load(path)


def test_splits_too_large(all_index: np.ndarray) -> None:
    with pytest.raises(ValueError, match="pool"):
        make_splits(all_index, SplitConfig(n_test=100_000, n_oracle=len(all_index)))
    with pytest.raises(ValueError):
        make_splits(all_index, SplitConfig(n_test=len(all_index) - 10, n_oracle=10))


def test_splits_overlap_rejected() -> None:
    one = np.array([1, 2], dtype=np.int64)
    with pytest.raises(ValueError, match="overlap"):
        Splits(seed=0, test=one, oracle=np.array([2, 3]), pool=np.array([4]))


# ---------------------------------------------------------------------------- radius graph


def brute_force_edges(pos: torch.Tensor, batch: torch.Tensor, cutoff: float) -> set:
    edges = set()
    p = pos.double()
    for i in range(pos.shape[0]):
        for j in range(pos.shape[0]):
            if i != j and batch[i] == batch[j] and float((p[i] - p[j]).norm()) < cutoff:
                edges.add((j, i))
    return edges


@pytest.mark.parametrize("cutoff", [1.2, 2.5, 5.0])
def test_radius_graph_matches_brute_force(qm9: MolecularData, cutoff: float) -> None:
    gen = torch.Generator().manual_seed(int(cutoff * 10))
    rows = torch.randperm(len(qm9), generator=gen)[:6]
    _, pos, batch, _ = qm9.batch(rows)
    edge_index = radius_graph(pos, batch, cutoff)
    src, dst = edge_index
    got = set(zip(src.tolist(), dst.tolist(), strict=True))
    assert len(got) == edge_index.shape[1], "duplicate edges"
    assert got == brute_force_edges(pos, batch, cutoff)
    assert not bool((src == dst).any())
    assert bool((batch[src] == batch[dst]).all())
    assert bool(((pos[src] - pos[dst]).norm(dim=-1) < cutoff).all())
    assert bool((dst[1:] >= dst[:-1]).all())
    assert torch.equal(radius_graph(pos, batch, cutoff, num_graphs=rows.numel()), edge_index)


def test_radius_graph_no_cross_molecule_edges() -> None:
    # Two molecules on top of each other: only within-molecule pairs may be joined.
    pos = torch.zeros(5, 3)
    pos[:, 0] = torch.tensor([0.0, 0.5, 0.0, 0.5, 1.0])
    batch = torch.tensor([0, 0, 1, 1, 1])
    edges = set(zip(*radius_graph(pos, batch, 0.7).tolist(), strict=True))
    assert edges == {(1, 0), (0, 1), (3, 2), (2, 3), (4, 3), (3, 4)}


def test_radius_graph_single_atoms() -> None:
    pos = torch.randn(3, 3)
    batch = torch.arange(3)
    assert radius_graph(pos, batch, 10.0).shape == (2, 0)


# ------------------------------------------------------------------------------ PyG source


def pyg_molecules(qm9: MolecularData, *, name: bool = True, idx: bool = True) -> list[Data]:
    """PyG QM9-style ``Data`` built from qm9pack molecules (``y`` column 14 is our target)."""
    gen = torch.Generator().manual_seed(0)
    items = []
    for index in PYG_INDICES:
        row = int(qm9.rows_of([index])[0])
        start, stop = int(qm9.ptr[row]), int(qm9.ptr[row + 1])
        y = torch.randn(1, 19, generator=gen)
        y[0, H_ATOM] = float(qm9.y[row])
        fields = {
            "z": qm9.z[start:stop].clone(),
            "pos": qm9.pos[start:stop].clone(),
            "x": torch.randn(stop - start, 11, generator=gen),
            "y": y,
            "smiles": qm9.smiles[row],
        }
        if name:
            fields["name"] = f"gdb_{index}"
        if idx:
            fields["idx"] = index - 1
        items.append(Data(**fields))
    return items


def write_pyg_root(root: Path, items: list[Data]) -> Path:
    """Lay out ``items`` the way PyG's ``QM9`` stores its processed data."""
    (root / "processed").mkdir(parents=True)
    InMemoryDataset.save(items, str(root / "processed" / PROCESSED_FILE))
    return root


def assert_matches_default(data: MolecularData, qm9: MolecularData) -> None:
    assert data.source == "pyg"
    assert data.qm9_index.tolist() == sorted(PYG_INDICES)
    rows = qm9.rows_of(data.qm9_index)
    ref = qm9.subset(rows)
    assert torch.equal(data.ptr, ref.ptr)
    assert torch.equal(data.z, ref.z)
    assert torch.equal(data.pos, ref.pos)
    assert data.y.dtype == torch.float64
    # PyG keeps targets in float32.
    torch.testing.assert_close(data.y, ref.y, rtol=0, atol=1e-4)
    assert data.smiles == ref.smiles


def test_from_pyg_data(qm9: MolecularData) -> None:
    assert_matches_default(from_pyg_data(pyg_molecules(qm9)), qm9)


@pytest.mark.parametrize(("name", "idx"), [(True, False), (False, True)])
def test_from_pyg_data_index_from_name_or_idx(qm9: MolecularData, name: bool, idx: bool) -> None:
    data = from_pyg_data(pyg_molecules(qm9, name=name, idx=idx))
    assert data.qm9_index.tolist() == sorted(PYG_INDICES)


def test_from_pyg_data_without_index_raises(qm9: MolecularData) -> None:
    with pytest.raises(ValueError, match="QM9 ind"):
        from_pyg_data(pyg_molecules(qm9, name=False, idx=False))
    with pytest.raises(ValueError):
        from_pyg_data([])


def test_load_pyg_root(qm9: MolecularData, tmp_path: Path) -> None:
    items = pyg_molecules(qm9)
    root = write_pyg_root(tmp_path / "QM9", items)
    data = load_pyg_qm9(root)
    assert_matches_default(data, qm9)
    assert_same_data(data, from_pyg_data(items))

    cache = tmp_path / "cache"
    cached = load_qm9(source="pyg", root=root, cache=cache)
    assert_same_data(cached, data)
    assert len(list(cache.glob("*.pt"))) == 1
    assert_same_data(load_qm9(source="pyg", root=root, cache=cache), data)


def test_load_pyg_single_molecule(qm9: MolecularData, tmp_path: Path) -> None:
    # InMemoryDataset.collate stores a one-molecule data set without slices.
    item = pyg_molecules(qm9)[1]
    data = load_pyg_qm9(write_pyg_root(tmp_path / "QM9", [item]))
    assert data.qm9_index.tolist() == [1]
    assert torch.equal(data.pos, item.pos) and torch.equal(data.z, item.z)
    assert abs(float(data.y[0]) - METHANE_H_ATOM_EV) < 1e-4


def test_pyg_qm9_class_opens_the_same_root(
    qm9: MolecularData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-built root is what PyG's own ``QM9`` reads; both paths agree."""
    from torch_geometric.datasets import QM9

    def no_download(self: QM9) -> None:
        pytest.fail("QM9 tried to download")

    monkeypatch.setattr(QM9, "download", no_download)
    root = write_pyg_root(tmp_path / "QM9", pyg_molecules(qm9))
    # Present raw files stop QM9 from downloading; the processed file is then just loaded.
    (root / "raw").mkdir()
    for name in QM9.raw_file_names.fget(None):
        (root / "raw" / name).touch()
    dataset = QM9(str(root))
    assert len(dataset) == len(PYG_INDICES)
    fast = from_pyg_data(dataset)  # collated storage
    slow = from_pyg_data(list(dataset))  # one Data at a time
    assert_same_data(fast, slow)
    assert_same_data(fast, load_pyg_qm9(root))
    assert_matches_default(fast, qm9)


def test_load_pyg_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))) as err:
        load_pyg_qm9(tmp_path)
    assert PROCESSED_FILE in str(err.value)
    with pytest.raises(ValueError, match="processed"):
        load_qm9(source="pyg", root=tmp_path / "absent", cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_load_pyg_corrupt_file_raises(tmp_path: Path) -> None:
    (tmp_path / "processed").mkdir()
    (tmp_path / "processed" / PROCESSED_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="InMemoryDataset"):
        load_pyg_qm9(tmp_path)
