"""Synthetic datasets: sizes, determinism, MMRec-like splits, planted multimodal structure, and the
write/load round trip; `load_dataset` dispatch."""
import numpy as np
import pytest
import torch

from mambarec_fast.data import (PRESETS, DataError, SyntheticSpec, knn_graph, load_dataset, load_mmrec,
                                make_synthetic, write_mmrec)


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic("tiny", seed=0)


def all_rows(data):
    return np.concatenate([data.train, data.valid, data.test])


def test_tiny_sizes(tiny):
    spec = PRESETS["tiny"]
    assert (tiny.n_users, tiny.n_items) == (spec.n_users, spec.n_items) == (300, 200)
    assert len(all_rows(tiny)) == spec.n_interactions == 7000
    assert {m: a.shape for m, a in tiny.features.items()} == {"image": (200, 96), "text": (200, 48)}
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in tiny.features.values())
    assert len(np.unique(all_rows(tiny), axis=0)) == 7000  # a user picks an item at most once


def test_deterministic_by_seed(tiny):
    again, other = make_synthetic("tiny", seed=0), make_synthetic("tiny", seed=1)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(again, split), getattr(tiny, split))
    for m in tiny.features:
        np.testing.assert_array_equal(again.features[m], tiny.features[m])
    assert not np.array_equal(other.train, tiny.train)


def test_per_user_split_like_mmrec(tiny):
    per_user = {s: np.bincount(getattr(tiny, s)[:, 0], minlength=tiny.n_users) for s in ("train", "valid", "test")}
    assert (per_user["train"] >= 1).all() and (per_user["valid"] >= 1).all() and (per_user["test"] >= 1).all()
    assert (per_user["train"] + per_user["valid"] + per_user["test"] >= PRESETS["tiny"].min_user_interactions).all()
    share = len(tiny.test) / len(all_rows(tiny))
    assert 0.07 < share < 0.13 and len(tiny.valid) == len(tiny.test)


def test_long_tailed_popularity(tiny):
    counts = np.sort(np.bincount(all_rows(tiny)[:, 1], minlength=tiny.n_items))[::-1]
    assert counts[:20].sum() > 4 * counts[-20:].sum()  # the top 10% of items vs the bottom 10%
    assert all_rows(tiny)[:, 1].max() == tiny.n_items - 1  # the last id occurs: `I = max + 1` holds on reload


def test_features_carry_the_interaction_structure(tiny):
    """Items that are feature-space neighbours share far more users than random pairs; noise
    features of the same shape do not (the planted signal a multimodal model can use)."""
    r = np.zeros((tiny.n_users, tiny.n_items))
    r[tiny.train[:, 0], tiny.train[:, 1]] = 1.0
    co = torch.from_numpy(r.T @ r)
    off_diagonal = ~torch.eye(tiny.n_items, dtype=torch.bool)
    noise = np.random.default_rng(1).standard_normal(tiny.features["image"].shape).astype(np.float32)

    def neighbour_co_use(features):
        neighbours = (knn_graph(features, k=10).to_dense() != 0) & off_diagonal
        return co[neighbours].mean().item()

    baseline = co[off_diagonal].mean().item()
    for modality, features in tiny.features.items():
        assert neighbour_co_use(features) > 1.3 * baseline, modality
    assert neighbour_co_use(noise) < 1.1 * baseline


def test_write_load_round_trip(tiny, tmp_path):
    write_mmrec(tiny, tmp_path / "tiny")
    again = load_mmrec(tmp_path / "tiny")
    assert (again.n_users, again.n_items) == (tiny.n_users, tiny.n_items)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(again, split), getattr(tiny, split))
    for m in tiny.features:
        np.testing.assert_array_equal(again.features[m], tiny.features[m])


def test_custom_spec_and_spec_validation():
    spec = SyntheticSpec("mini", 20, 12, 110, image_dim=5, text_dim=3, latent_dim=4)
    data = make_synthetic(spec, seed=3)
    assert (data.n_users, data.n_items, len(all_rows(data))) == (20, 12, 110)
    with pytest.raises(ValueError, match="cannot give 20 users 5 each"):
        SyntheticSpec("bad", 20, 12, 99, image_dim=5, text_dim=3)
    with pytest.raises(ValueError, match="exceed half"):
        SyntheticSpec("bad", 20, 12, 121, image_dim=5, text_dim=3)


def test_baby_sizes_match_spec():
    data = make_synthetic("baby")
    assert (data.n_users, data.n_items, len(all_rows(data))) == (19_445, 7_050, 160_792)
    assert {m: a.shape[1] for m, a in data.features.items()} == {"image": 4096, "text": 384}


def test_load_dataset_dispatch():
    data = load_dataset("synthetic:tiny", modalities=["text"], seed=0)
    assert sorted(data.features) == ["text"] and data.n_users == 300
    with pytest.raises(DataError, match=r"unknown synthetic preset 'huge'; presets: \['baby', .*'tiny'\]"):
        load_dataset("synthetic:huge")
    with pytest.raises(DataError, match=r"unknown modalities \['sound'\]"):
        load_dataset("synthetic:tiny", modalities=["sound"])
