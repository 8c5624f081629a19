"""TrainSampler (SPEC §7): epochs cover every train row once, negatives are uniform over the train
items outside the user's history, and everything replays from the generator state."""
import numpy as np
import pytest
import torch

from mambarec_fast.data import DataError, TrainSampler, make_synthetic


def random_train(n_users=40, n_items=30, n_rows=500, seed=0):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.integers(0, n_users, n_rows), rng.integers(0, n_items, n_rows)])


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_epoch_serves_every_row_once_in_batches():
    train = random_train()
    sampler = TrainSampler(train, 40, 30, batch_size=64)
    batches = list(sampler.epoch(gen(0)))
    assert len(sampler) == len(batches) == 8
    assert [len(b[0]) for b in batches] == [64] * 7 + [500 - 7 * 64]
    for users, pos, neg in batches:
        assert users.dtype == pos.dtype == neg.dtype == torch.int64
        assert users.shape == pos.shape == neg.shape
    served = torch.stack([torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])], 1).numpy()
    np.testing.assert_array_equal(np.sort(served.view("i8,i8"), axis=0), np.sort(train.view("i8,i8"), axis=0))
    assert not np.array_equal(served, train)  # shuffled


def test_negatives_never_in_history_and_only_train_items():
    train = random_train(n_users=10, n_items=25, n_rows=200, seed=1)  # dense histories: many redraws
    train = train[train[:, 1] != 24]  # item 24 never occurs in train: never a negative
    history = set(map(tuple, train.tolist()))
    sampler = TrainSampler(train, 10, 25, batch_size=50)
    for _ in range(5):
        for users, _, neg in sampler.epoch(gen(_)):
            assert not any((u, i) in history for u, i in zip(users.tolist(), neg.tolist()))
            assert (neg != 24).all()


def test_negatives_are_uniform_over_allowed_items():
    # user 0 has seen items 0 and 1; items 0..5 occur in train; item 6 exists but never in train
    train = np.array([[0, 0], [0, 1], [1, 2], [1, 3], [2, 4], [2, 5]])
    sampler = TrainSampler(train, 3, 7, batch_size=4)
    n = 40_000
    neg = sampler.negatives(torch.zeros(n, dtype=torch.int64), gen(0))
    counts = torch.bincount(neg, minlength=7).numpy()
    assert counts[[0, 1, 6]].sum() == 0
    expected = n / 4
    chi2 = ((counts[2:6] - expected) ** 2 / expected).sum()
    assert chi2 < 16.3  # 3 degrees of freedom: p = 0.001


def test_epoch_replays_from_generator_state():
    sampler = TrainSampler(random_train(), 40, 30, batch_size=100)
    g = gen(7)
    list(sampler.epoch(g))
    state = g.get_state()
    first = [torch.stack(b) for b in sampler.epoch(g)]
    g.set_state(state)
    replay = [torch.stack(b) for b in sampler.epoch(g)]
    assert all(torch.equal(a, b) for a, b in zip(first, replay)) and len(first) == len(replay)
    other = [torch.stack(b) for b in sampler.epoch(gen(8))]
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_epoch_draws_everything_at_the_call():
    sampler = TrainSampler(random_train(), 40, 30, batch_size=100)
    g1, g2 = gen(3), gen(3)
    lazy = sampler.epoch(g1)
    eager = list(sampler.epoch(g2))
    assert torch.equal(g1.get_state(), g2.get_state())  # consuming the batches draws nothing more
    assert all(torch.equal(torch.stack(a), torch.stack(b)) for a, b in zip(lazy, eager))


def test_accepts_torch_train_and_synthetic_data():
    data = make_synthetic("tiny")
    sampler = TrainSampler(torch.from_numpy(data.train), data.n_users, data.n_items, 2048)
    assert len(sampler) == -(-len(data.train) // 2048)
    users, pos, neg = next(iter(sampler.epoch(gen(0))))
    assert len(users) == 2048


def test_user_with_every_train_item_is_refused():
    train = np.array([[0, 0], [0, 1], [1, 1], [0, 1]])
    with pytest.raises(DataError, match=r"user 0 has interacted with all 2 train items"):
        TrainSampler(train, 2, 3, 8)


@pytest.mark.parametrize("train,kwargs,error,match", [
    (np.zeros((0, 2), np.int64), {}, DataError, "empty"),
    (np.zeros((4, 3), np.int64), {}, ValueError, r"\[n, 2\].*\(4, 3\)"),
    (np.array([[0, 0], [1, 9]]), {}, ValueError, r"row 1 has item id 9 outside \[0, 5\)"),
    (np.array([[0, 0], [1, 1]]), {"batch_size": 0}, ValueError, "batch_size must be >= 1"),
])
def test_bad_input(train, kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainSampler(train, 3, 5, **{"batch_size": 4, **kwargs})
