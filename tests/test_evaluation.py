"""Evaluation (SPEC §7) against an independent per-user Python computation and a hand-worked case."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from mambarec_fast.evaluation import (
    METRICS,
    UserItems,
    evaluate_embeddings,
    evaluate_model,
    ranking_metrics,
    topk_scores,
)

# -- an independent oracle: plain loops over users, items and ranks ------------------------------


def brute_top(user_emb, item_emb, users, train_sets, k):
    """Each user's ranking: unmasked items by descending score, then the masked ones."""
    scores = (user_emb.double() @ item_emb.double().T).numpy()
    tops = []
    for u in users:
        order = sorted(range(item_emb.shape[0]), key=lambda i: -scores[u, i])
        free = [i for i in order if i not in train_sets[u]]
        tops.append(free + [i for i in order if i in train_sets[u]])
    return [t[:k] for t in tops]


def brute_metrics(tops, users, target_sets, ks):
    sums = {f"{m}@{k}": 0.0 for k in ks for m in METRICS}
    for top, u in zip(tops, users):
        rel = target_sets[u]
        for k in ks:
            hits = [1 if j < len(top) and top[j] in rel else 0 for j in range(k)]
            ideal = min(len(rel), k)
            dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
            idcg = sum(1 / math.log2(j + 2) for j in range(ideal))
            ap = sum(hits[j] * sum(hits[: j + 1]) / (j + 1) for j in range(k)) / ideal
            sums[f"recall@{k}"] += sum(hits) / len(rel)
            sums[f"precision@{k}"] += sum(hits) / k
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"map@{k}"] += ap
    return {key: value / len(users) for key, value in sums.items()}


def random_split(rng, n_users, n_items, max_train, max_target):
    """Disjoint random train/target sets per user (some users without target, some nearly all masked)."""
    train, target = [], []
    for u in range(n_users):
        perm = rng.permutation(n_items)
        n_train = n_items - 2 if u % 7 == 3 else int(rng.integers(0, max_train + 1))
        n_target = int(rng.integers(0, max_target + 1)) if u % 5 else 0
        n_target = min(n_target, n_items - n_train)
        train.append(set(perm[:n_train].tolist()))
        target.append(set(perm[n_train : n_train + n_target].tolist()))
    return train, target


def to_pairs(sets):
    rows = [(u, i) for u, items in enumerate(sets) for i in items]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def assert_metrics_close(got, expected, rel=1e-12):
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=rel, abs=1e-15), key


# -- UserItems ------------------------------------------------------------------------------------


def test_from_pairs_sorts_dedups_and_keeps_empty_users():
    pairs = np.array([[2, 4], [0, 3], [2, 1], [0, 3], [2, 4], [0, 0]], dtype=np.int32)
    ui = UserItems.from_pairs(pairs, n_users=4)
    assert ui.indptr.dtype == ui.indices.dtype == torch.int64
    assert ui.indptr.tolist() == [0, 2, 2, 4, 4]
    assert ui.indices.tolist() == [0, 3, 1, 4]
    assert ui.n_users == 4
    assert ui.counts().tolist() == [2, 0, 2, 0]
    assert ui.users_with_items().tolist() == [0, 2]


def test_from_pairs_empty():
    ui = UserItems.from_pairs(np.zeros((0, 2), dtype=np.int64), n_users=3)
    assert ui.indptr.tolist() == [0, 0, 0, 0]
    assert ui.indices.numel() == 0
    assert ui.users_with_items().numel() == 0


def test_gather_flattens_the_requested_users():
    ui = UserItems.from_pairs(np.array([[0, 1], [0, 2], [2, 0], [3, 5], [3, 4]]), n_users=4)
    rows, items = ui.gather(torch.tensor([3, 1, 0, 3]))
    assert rows.tolist() == [0, 0, 2, 2, 3, 3]
    assert items.tolist() == [4, 5, 1, 2, 4, 5]


# -- a case worked by hand -----------------------------------------------------------------------


def test_hand_computed_two_users_five_items():
    # Item i scores 5 - i for every user, so the unmasked items rank in id order.
    item_emb = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]], dtype=torch.float64)
    user_emb = torch.ones(3, 1, dtype=torch.float64)
    train = UserItems.from_pairs(np.array([[0, 0], [1, 1], [2, 0]]), n_users=3)
    target = UserItems.from_pairs(np.array([[0, 1], [0, 3], [1, 4]]), n_users=3)  # user 2: none
    # user 0 ranks [1, 2, 3, 4, 0]: hits at ranks 1 and 3 of 2 relevant;
    # user 1 ranks [0, 2, 3, 4, 1]: a hit at rank 4 of 1 relevant.
    top = topk_scores(user_emb, item_emb, torch.tensor([0, 1]), train, k=5)
    assert top.tolist() == [[1, 2, 3, 4, 0], [0, 2, 3, 4, 1]]

    got = evaluate_embeddings(user_emb, item_emb, train, target, ks=(1, 2, 3, 4, 7))
    idcg2 = 1 + 1 / math.log2(3)
    ndcg0_3 = 1.5 / idcg2  # user 0 from K=3 on: DCG 1 + 1/log2(4)
    ndcg1_4 = 1 / math.log2(5)  # user 1 from K=4 on, IDCG 1
    expected = {
        "recall@1": 0.25, "precision@1": 0.5, "ndcg@1": 0.5, "map@1": 0.5,
        "recall@2": 0.25, "precision@2": 0.25, "ndcg@2": (1 / idcg2) / 2, "map@2": 0.25,
        "recall@3": 0.5, "precision@3": 1 / 3, "ndcg@3": ndcg0_3 / 2, "map@3": 5 / 12,
        "recall@4": 1.0, "precision@4": 0.375, "ndcg@4": (ndcg0_3 + ndcg1_4) / 2, "map@4": 13 / 24,
        # K = 7 > 5 items: the list holds all 5, the two missing slots are misses.
        "recall@7": 1.0, "precision@7": 1.5 / 7, "ndcg@7": (ndcg0_3 + ndcg1_4) / 2, "map@7": 13 / 24,
    }
    assert_metrics_close(got, expected, rel=1e-14)


# -- against the oracle --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_embeddings_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, ks = 37, 29, (1, 3, 5, 10, 20)
    train_sets, target_sets = random_split(rng, n_users, n_items, max_train=12, max_target=14)
    gen = torch.Generator().manual_seed(seed)
    user_emb = torch.randn(n_users, 6, generator=gen, dtype=torch.float64)
    item_emb = torch.randn(n_items, 6, generator=gen, dtype=torch.float64)
    train = UserItems.from_pairs(to_pairs(train_sets), n_users)
    target = UserItems.from_pairs(to_pairs(target_sets), n_users)

    got = evaluate_embeddings(user_emb, item_emb, train, target, ks=ks, batch_size=8)
    users = [u for u in range(n_users) if target_sets[u]]
    expected = brute_metrics(brute_top(user_emb, item_emb, users, train_sets, max(ks)), users, target_sets, ks)
    assert_metrics_close(got, expected)
    assert got["recall@20"] > 0  # the comparison is not vacuous


def test_ranking_metrics_matches_brute_force_on_random_lists():
    rng = np.random.default_rng(5)
    n_users, n_items, width, ks = 40, 20, 12, (1, 2, 4, 8, 12, 15)
    target_sets = [set(rng.choice(n_items, int(rng.integers(1, 16)), replace=False).tolist()) for _ in range(n_users)]
    users = rng.permutation(n_users)[:31]
    tops = [rng.permutation(n_items)[:width].tolist() for _ in users]
    relevant = UserItems.from_pairs(to_pairs(target_sets), n_users)
    got = ranking_metrics(torch.tensor(tops), torch.from_numpy(users), relevant, ks)
    assert_metrics_close(got, brute_metrics(tops, users.tolist(), target_sets, ks))


def test_topk_matches_brute_force_and_ignores_batch_size():
    rng = np.random.default_rng(3)
    n_users, n_items, k = 23, 17, 9
    train_sets, _ = random_split(rng, n_users, n_items, max_train=10, max_target=0)
    gen = torch.Generator().manual_seed(3)
    user_emb = torch.randn(n_users, 5, generator=gen, dtype=torch.float64)
    item_emb = torch.randn(n_items, 5, generator=gen, dtype=torch.float64)
    train = UserItems.from_pairs(to_pairs(train_sets), n_users)
    users = torch.from_numpy(rng.permutation(n_users)[:19])

    full = topk_scores(user_emb, item_emb, users, train, k, batch_size=4096)
    expected = brute_top(user_emb, item_emb, users.tolist(), train_sets, k)
    for row, exp, u in zip(full.tolist(), expected, users.tolist()):
        n_free = n_items - len(train_sets[u])
        assert row[:n_free] == exp[:n_free]  # the masked tail is in no defined order
        assert set(row[n_free:]) <= train_sets[u]
    for batch_size in (1, 4, 19, 20):
        assert torch.equal(topk_scores(user_emb, item_emb, users, train, k, batch_size=batch_size), full)


def test_masked_item_never_listed_even_with_the_highest_score():
    n_users, n_items = 6, 10
    user_emb = torch.ones(n_users, 3)
    item_emb = torch.rand(n_items, 3, generator=torch.Generator().manual_seed(0))
    item_emb[4] = 100.0  # item 4 outscores everything for every user
    train = UserItems.from_pairs(np.array([[u, 4] for u in range(n_users)]), n_users)
    users = torch.arange(n_users)
    top = topk_scores(user_emb, item_emb, users, train, k=n_items - 1, batch_size=4)
    assert not (top == 4).any()
    unmasked = topk_scores(user_emb, item_emb, users, UserItems.from_pairs(np.zeros((0, 2), np.int64), n_users), k=1)
    assert (unmasked == 4).all()  # without the mask it would be first
    full = topk_scores(user_emb, item_emb, users, train, k=n_items)
    assert (full[:, -1] == 4).all()  # a full list puts it last


def test_user_with_only_a_few_unmasked_items():
    n_items = 12
    item_emb = torch.linspace(1.0, 2.0, n_items).unsqueeze(1)  # item 11 scores highest
    user_emb = torch.ones(2, 1)
    keep = {3, 7}
    train_sets = [set(range(n_items)) - keep, set()]
    train = UserItems.from_pairs(to_pairs(train_sets), 2)
    top = topk_scores(user_emb, item_emb, torch.tensor([0, 1]), train, k=5)
    assert top[0, :2].tolist() == [7, 3]
    assert set(top[0, 2:].tolist()) <= train_sets[0]
    assert top[1].tolist() == [11, 10, 9, 8, 7]

    target = UserItems.from_pairs(np.array([[0, 3], [1, 0]]), 2)
    got = evaluate_embeddings(user_emb, item_emb, train, target, ks=(1, 2, 5))
    assert got["recall@1"] == 0.0 and got["recall@2"] == 0.5 and got["ndcg@2"] == pytest.approx(0.5 / math.log2(3))


def test_k_larger_than_the_item_count():
    gen = torch.Generator().manual_seed(1)
    user_emb, item_emb = torch.randn(4, 3, generator=gen), torch.randn(5, 3, generator=gen)
    train = UserItems.from_pairs(np.array([[0, 1], [2, 0], [2, 4]]), 4)
    top = topk_scores(user_emb, item_emb, torch.arange(4), train, k=50)
    assert top.shape == (4, 5)
    assert all(sorted(row) == list(range(5)) for row in top.tolist())
    target = UserItems.from_pairs(np.array([[0, 2], [1, 3], [3, 0], [3, 1]]), 4)
    got = evaluate_embeddings(user_emb, item_emb, train, target)  # default ks reach 50
    assert got["recall@50"] == 1.0 and got["precision@50"] == pytest.approx(4 / 3 / 50)


def test_non_contiguous_and_float32_embeddings():
    gen = torch.Generator().manual_seed(2)
    user_emb, item_emb = torch.randn(9, 4, generator=gen), torch.randn(4, 11, generator=gen).T
    assert not item_emb.is_contiguous()
    train = UserItems.from_pairs(np.array([[0, 1], [3, 2], [8, 10]]), 9)
    target = UserItems.from_pairs(np.array([[0, 2], [3, 3], [5, 1], [8, 9]]), 9)
    got = evaluate_embeddings(user_emb, item_emb, train, target, ks=(2, 5))
    ref = evaluate_embeddings(user_emb.double(), item_emb.contiguous().double(), train, target, ks=(2, 5))
    assert got == ref


# -- evaluate_model ------------------------------------------------------------------------------


class StubModel(nn.Module):
    """Records how often and in which mode `embeddings` is called."""

    def __init__(self, user_emb, item_emb, fail=False):
        super().__init__()
        self.user_emb, self.item_emb, self.fail = user_emb, item_emb, fail
        self.calls = []

    def embeddings(self):
        self.calls.append((self.training, torch.is_grad_enabled()))
        if self.fail:
            raise RuntimeError("boom")
        return self.user_emb, self.item_emb


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_model_calls_embeddings_once_in_eval_mode_and_restores(training):
    gen = torch.Generator().manual_seed(4)
    user_emb, item_emb = torch.randn(5, 3, generator=gen), torch.randn(8, 3, generator=gen)
    train = UserItems.from_pairs(np.array([[0, 1], [4, 2]]), 5)
    target = UserItems.from_pairs(np.array([[0, 3], [2, 5], [4, 7]]), 5)
    model = StubModel(user_emb, item_emb)
    model.train(training)
    got = evaluate_model(model, train, target, ks=(1, 3), batch_size=2)
    assert model.calls == [(False, False)]
    assert model.training is training
    assert got == evaluate_embeddings(user_emb, item_emb, train, target, ks=(1, 3))


def test_evaluate_model_restores_mode_when_embeddings_fail():
    model = StubModel(None, None, fail=True).train()
    empty = UserItems.from_pairs(np.zeros((0, 2), np.int64), 1)
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_model(model, empty, empty)
    assert model.training


# -- bad inputs ----------------------------------------------------------------------------------


def _small():
    gen = torch.Generator().manual_seed(6)
    user_emb, item_emb = torch.randn(3, 4, generator=gen), torch.randn(5, 4, generator=gen)
    train = UserItems.from_pairs(np.array([[0, 1]]), 3)
    target = UserItems.from_pairs(np.array([[0, 2], [1, 3]]), 3)
    return user_emb, item_emb, train, target


@pytest.mark.parametrize("ks", [(), (0,), (5, -1), (2.5,), (True,)])
def test_bad_ks(ks):
    user_emb, item_emb, train, target = _small()
    with pytest.raises(ValueError, match="ks|K"):
        evaluate_embeddings(user_emb, item_emb, train, target, ks=ks)


def test_bad_embeddings():
    user_emb, item_emb, train, target = _small()
    with pytest.raises(ValueError, match="embedding sizes differ"):
        evaluate_embeddings(user_emb, item_emb[:, :3], train, target)
    with pytest.raises(TypeError, match="floating"):
        evaluate_embeddings(user_emb, item_emb.long(), train, target)
    with pytest.raises(ValueError, match="dtype"):
        evaluate_embeddings(user_emb, item_emb.double(), train, target)
    nan_items = item_emb.clone()
    nan_items[2, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        evaluate_embeddings(user_emb, nan_items, train, target)


def test_user_items_must_match_the_embeddings():
    user_emb, item_emb, train, target = _small()
    four_users = UserItems.from_pairs(np.array([[3, 0]]), 4)
    with pytest.raises(ValueError, match="exclude covers 4 users but user_emb has 3 rows"):
        topk_scores(user_emb, item_emb, torch.tensor([0]), four_users, k=2)
    with pytest.raises(ValueError, match="train covers 4 users but user_emb has 3 rows"):
        evaluate_embeddings(user_emb, item_emb, four_users, target)
    with pytest.raises(ValueError, match="target covers 2 users"):
        evaluate_embeddings(user_emb, item_emb, train, UserItems.from_pairs(np.array([[1, 0]]), 2))
    with pytest.raises(ValueError, match="item id 5 but item_emb has 5 rows"):
        evaluate_embeddings(user_emb, item_emb, train, UserItems.from_pairs(np.array([[1, 5]]), 3))
    with pytest.raises(ValueError, match="exclude holds item id 9"):
        topk_scores(user_emb, item_emb, torch.tensor([0]), UserItems.from_pairs(np.array([[1, 9]]), 3), k=2)
    with pytest.raises(ValueError, match="no items"):
        evaluate_embeddings(user_emb, item_emb, train, UserItems.from_pairs(np.zeros((0, 2), np.int64), 3))


def test_bad_pairs_name_the_row():
    with pytest.raises(ValueError, match=r"user id 7 at row 2 of pairs must lie in \[0, 5\)"):
        UserItems.from_pairs(np.array([[0, 1], [4, 1], [7, 0]]), n_users=5)
    with pytest.raises(ValueError, match="item id -3 at row 1 of pairs must be >= 0"):
        UserItems.from_pairs(np.array([[0, 1], [1, -3]]), n_users=5)
    with pytest.raises(ValueError, match=r"item id 9 at row 0 of pairs must lie in \[0, 9\)"):
        UserItems.from_pairs(np.array([[0, 9]]), n_users=5, n_items=9)
    with pytest.raises(ValueError, match=r"shape \[n, 2\]"):
        UserItems.from_pairs(np.array([[0, 1, 2]]), n_users=5)
    with pytest.raises(TypeError, match="integer"):
        UserItems.from_pairs(np.array([[0.0, 1.0]]), n_users=5)
    with pytest.raises(TypeError, match="int64"):
        UserItems(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0]))
    with pytest.raises(ValueError, match="indptr must run from 0"):
        UserItems(torch.tensor([0, 2]), torch.tensor([0]))


def test_bad_topk_and_ranking_arguments():
    user_emb, item_emb, train, target = _small()
    with pytest.raises(ValueError, match="k must be a positive integer"):
        topk_scores(user_emb, item_emb, torch.tensor([0]), train, k=0)
    with pytest.raises(ValueError, match="batch_size"):
        topk_scores(user_emb, item_emb, torch.tensor([0]), train, k=2, batch_size=0)
    with pytest.raises(ValueError, match=r"users must lie in \[0, 3\)"):
        topk_scores(user_emb, item_emb, torch.tensor([0, 3]), train, k=2)
    with pytest.raises(TypeError, match="users must be a 1-D int64"):
        topk_scores(user_emb, item_emb, torch.tensor([0.0]), train, k=2)
    top = torch.tensor([[2, 0], [3, 1]])
    with pytest.raises(ValueError, match="user 2 has no relevant items"):
        ranking_metrics(top, torch.tensor([0, 2]), target, ks=(1,))
    with pytest.raises(ValueError, match="top has 2 rows but users has 1"):
        ranking_metrics(top, torch.tensor([0]), target, ks=(1,))
    with pytest.raises(TypeError, match=r"top must be an int64 \[n, K\]"):
        ranking_metrics(top.float(), torch.tensor([0, 1]), target, ks=(1,))
    with pytest.raises(ValueError, match="negative item id"):
        ranking_metrics(torch.tensor([[2, -1], [3, 1]]), torch.tensor([0, 1]), target, ks=(1,))
