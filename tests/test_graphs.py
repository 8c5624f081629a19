"""Graph builders (SPEC §2) against independent dense float64 computations on small random data."""
import warnings

import numpy as np
import pytest
import torch

from mambarec_fast.data import (build_graphs, cached_knn_graph, knn_graph, load_mmrec, make_synthetic,
                                user_item_graphs)
from mambarec_fast.data import graphs as graphs_module
from mambarec_fast.reference import MambaRecGraphs


def dense_adjacency(n_users, n_items, train):
    """`Â` straight from SPEC §2, dense float64."""
    r = np.zeros((n_users, n_items))
    r[train[:, 0], train[:, 1]] = 1.0
    a = np.block([[np.zeros((n_users, n_users)), r], [r.T, np.zeros((n_items, n_items))]])
    deg = a.sum(axis=1)
    inv = np.where(deg > 0, deg, 1.0) ** -0.5 * (deg > 0)
    return inv[:, None] * a * inv[None, :]


def dense_knn(features, k):
    """`S` from SPEC §2 plus the zero-row rule, dense float64; assumes no ties in the top k."""
    f = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(f, axis=1)
    live = norms > 0
    unit = f / np.where(live, norms, 1.0)[:, None]
    sim = unit @ unit.T
    sim[:, ~live] = -np.inf
    w = np.zeros_like(sim)
    for i in range(len(f)):
        if not live[i]:
            w[i, i] = 1.0
            continue
        top = np.argsort(-sim[i])[:min(k, live.sum())]
        w[i, top] = sim[i, top]
    deg = w.sum(axis=1)
    inv = np.where(deg > 0, np.abs(deg), 1.0) ** -0.5 * (deg > 0)
    return inv[:, None] * w * inv[None, :]


def assert_coalesced_float32(t, shape):
    assert t.is_sparse and t.is_coalesced() and t.dtype == torch.float32 and tuple(t.shape) == shape
    assert torch.isfinite(t.values()).all()


@pytest.mark.parametrize("n_users,n_items,n_rows", [(7, 5, 12), (30, 17, 90), (4, 9, 1)])
def test_user_item_graphs_match_dense(n_users, n_items, n_rows):
    rng = np.random.default_rng(n_rows)
    train = np.column_stack([rng.integers(0, n_users, n_rows), rng.integers(0, n_items, n_rows)])
    train = np.concatenate([train, train[: n_rows // 3]])  # duplicates count once
    adj, ui = user_item_graphs(n_users, n_items, train)
    assert_coalesced_float32(adj, (n_users + n_items,) * 2)
    assert_coalesced_float32(ui, (n_users, n_items))
    want = dense_adjacency(n_users, n_items, train)
    np.testing.assert_allclose(adj.to_dense().numpy(), want, rtol=1e-6, atol=0)
    np.testing.assert_allclose(ui.to_dense().numpy(), want[:n_users, n_users:], rtol=1e-6, atol=0)
    assert adj._nnz() == 2 * len(np.unique(train, axis=0))  # no explicit zeros stored


def test_user_item_graphs_accept_torch_and_empty():
    adj, ui = user_item_graphs(3, 2, torch.tensor([[2, 1]]))
    assert adj.to_dense()[2, 4] == 1.0 and ui.to_dense()[2, 1] == 1.0
    adj, ui = user_item_graphs(3, 2, np.zeros((0, 2), np.int64))
    assert adj._nnz() == 0 and adj.shape == (5, 5)


@pytest.mark.parametrize("train,match", [
    (np.array([[0, 5]]), r"train: row 0 has item id 5 outside \[0, 5\)"),
    (np.array([[-1, 0]]), r"row 0 has user id -1 outside \[0, 4\)"),
    (np.zeros((3, 3), np.int64), r"\[n, 2\].*\(3, 3\)"),
    (np.zeros((3, 2), np.float32), r"integer array.*float32"),
])
def test_user_item_graphs_reject_bad_rows(train, match):
    with pytest.raises(ValueError, match=match):
        user_item_graphs(4, 5, train)


@pytest.mark.parametrize("n_items,dim,k", [(23, 6, 10), (40, 9, 3), (6, 4, 10), (1, 3, 10)])
def test_knn_graph_matches_dense(n_items, dim, k):
    # the offset keeps every degree positive (the non-positive case has its own test)
    features = (np.random.default_rng(n_items).standard_normal((n_items, dim)) + 0.5).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = knn_graph(features, k=k)
    assert_coalesced_float32(graph, (n_items, n_items))
    assert graph._nnz() == n_items * min(k, n_items)  # k > I: every item is kept
    np.testing.assert_allclose(graph.to_dense().numpy(), dense_knn(features, k), rtol=2e-5, atol=1e-6)
    assert (graph.to_dense().diagonal() > 0).all()  # each item is its own neighbour


def test_knn_graph_is_not_symmetrised():
    features = np.random.default_rng(1).standard_normal((30, 5)).astype(np.float32)
    dense = knn_graph(features, k=3).to_dense()
    assert not torch.equal(dense != 0, dense.T != 0)


def test_knn_graph_zero_rows_are_isolated_self_loops():
    features = np.random.default_rng(2).standard_normal((15, 5)).astype(np.float32)
    features[[3, 11]] = 0.0
    dense = knn_graph(features, k=4).to_dense()
    assert torch.isfinite(dense).all()
    for zero in (3, 11):
        expect = torch.zeros(15)
        expect[zero] = 1.0
        assert torch.equal(dense[zero], expect)  # itself only, weight 1 (degree 1)
        assert torch.count_nonzero(dense[:, zero]) == 1  # nobody else's candidate
    np.testing.assert_allclose(dense.numpy(), dense_knn(features, 4), rtol=2e-5, atol=1e-6)


def test_knn_graph_all_rows_zero():
    graph = knn_graph(np.zeros((4, 3), np.float32), k=10)
    assert torch.equal(graph.to_dense(), torch.eye(4))


def test_knn_graph_no_items():
    graph = knn_graph(np.zeros((0, 4), np.float32))
    assert_coalesced_float32(graph, (0, 0))
    assert graph._nnz() == 0


def test_knn_graph_block_size_does_not_change_the_graph():
    features = torch.randn(57, 8, generator=torch.Generator().manual_seed(3))
    whole = knn_graph(features, k=5, block_size=1024)
    for block in (1, 7, 56):
        part = knn_graph(features, k=5, block_size=block)
        assert torch.equal(part.indices(), whole.indices())
        torch.testing.assert_close(part.values(), whole.values(), rtol=1e-6, atol=1e-7)


def test_knn_graph_non_positive_degree_gives_zero_and_one_warning():
    features = np.array([[1.0, 0.0], [-1.0, 0.0], [-1.0, 1e-3]], np.float32)  # row 0: 1 - 1 - 1 < 0
    with pytest.warns(RuntimeWarning, match="1 item rows have a non-positive degree") as record:
        dense = knn_graph(features, k=3).to_dense()
    assert len(record) == 1
    assert torch.isfinite(dense).all()
    assert torch.count_nonzero(dense[0]) == 0 and torch.count_nonzero(dense[:, 0]) == 0


@pytest.mark.parametrize("features,kwargs,match", [
    (np.ones(4, np.float32), {}, r"2-D.*\(4,\)"),
    (np.array([[1.0, np.nan], [1.0, 0.0]], np.float32), {}, r"row 0 holds NaN"),
    (np.ones((3, 2), np.float32), {"k": 0}, r"k and block_size must be >= 1"),
    (np.ones((3, 2), np.float32), {"block_size": 0}, r"k and block_size must be >= 1"),
])
def test_knn_graph_rejects_bad_input(features, kwargs, match):
    with pytest.raises(ValueError, match=match):
        knn_graph(features, **kwargs)


def test_knn_graph_accepts_float64_and_non_contiguous():
    base = torch.randn(12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    view = base[:, ::2]
    want = knn_graph(view.float().contiguous(), k=4).to_dense()
    torch.testing.assert_close(knn_graph(view, k=4).to_dense(), want)


class CountingKnn:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return knn_graph(*args, **kwargs)


def test_cache_hit_miss_and_key(tmp_path, monkeypatch):
    counter = CountingKnn()
    monkeypatch.setattr(graphs_module, "knn_graph", counter)
    features = np.random.default_rng(5).standard_normal((20, 4)).astype(np.float32)
    first = cached_knn_graph(features, 3, tmp_path)
    assert counter.calls == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    again = cached_knn_graph(features.copy(), 3, tmp_path)
    assert counter.calls == 1  # hit: same bytes, other array object
    assert again.is_coalesced() and torch.equal(again.to_dense(), first.to_dense())
    cached_knn_graph(features, 4, tmp_path)  # k is part of the key
    changed = features.copy()
    changed[7, 1] += 1.0
    cached_knn_graph(changed, 3, tmp_path)  # so are the feature values
    cached_knn_graph(features.astype(np.float64), 3, tmp_path)  # and the dtype
    assert counter.calls == 4 and len(list(tmp_path.glob("*.pt"))) == 4
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: nothing half-done is left
    cached_knn_graph(features, 3, None)
    assert counter.calls == 5 and len(list(tmp_path.iterdir())) == 4


def test_cache_rebuilds_an_unusable_file(tmp_path, monkeypatch):
    features = np.random.default_rng(6).standard_normal((9, 3)).astype(np.float32)
    want = cached_knn_graph(features, 2, tmp_path)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="ignoring unusable kNN graph cache"):
        got = cached_knn_graph(features, 2, tmp_path)
    assert torch.equal(got.to_dense(), want.to_dense())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached_knn_graph(features, 2, tmp_path)  # the rewritten file is good again


def test_build_graphs_on_synthetic(tmp_path):
    data = make_synthetic("tiny")
    graphs = build_graphs(data, knn_k=5, cache_dir=tmp_path)
    assert isinstance(graphs, MambaRecGraphs) and sorted(graphs.items) == ["image", "text"]
    assert_coalesced_float32(graphs.adj, (data.n_users + data.n_items,) * 2)
    assert_coalesced_float32(graphs.ui, (data.n_users, data.n_items))
    for modality, graph in graphs.items.items():
        assert_coalesced_float32(graph, (data.n_items, data.n_items))
        assert graph._nnz() == 5 * data.n_items
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_real_ml100k_graphs(shared_data):
    data = load_mmrec(shared_data / "ml100k-mm")
    graphs = build_graphs(data)
    assert graphs.adj.shape == (943 + 1682, 943 + 1682) and graphs.ui.shape == (943, 1682)
    zero_items = np.flatnonzero(~data.features["text"].any(axis=1))
    assert len(zero_items) >= 1  # the item without metadata in this copy of u.item
    for graph in (graphs.adj, graphs.ui, *graphs.items.values()):
        assert torch.isfinite(graph.values()).all()
    for modality, graph in graphs.items.items():
        dense = graph.to_dense()
        for item in np.flatnonzero(~data.features[modality].any(axis=1)):
            assert torch.nonzero(dense[item]).flatten().tolist() == [item]
            assert torch.nonzero(dense[:, item]).flatten().tolist() == [item]
