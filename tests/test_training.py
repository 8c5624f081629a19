"""The trainer (SPEC §7): learning happens, resume is exact, features carry signal, NaN stops."""
import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch

from mambarec_fast.config import DEFAULTS
from mambarec_fast.data import make_synthetic, write_mmrec
from mambarec_fast.evaluation import UserItems, evaluate_embeddings
from mambarec_fast.training import build_model, run_grid, train

# Small embeddings and batches keep the reference cheap; the mechanics are the same at any size.
FAST = dict(DEFAULTS, data="synthetic:tiny", embedding_size=16, train_batch_size=256, epochs=2, eval_batch_size=128)


def test_resume_reaches_the_same_metrics_as_an_uninterrupted_run(tmp_path):
    full = train(dict(FAST, epochs=2, train_batch_size=1024), tmp_path / "full", progress=False, log=lambda *_: None)
    train(dict(FAST, epochs=1, train_batch_size=1024), tmp_path / "cut", progress=False, log=lambda *_: None)
    resumed = train(dict(FAST, epochs=2, train_batch_size=1024), tmp_path / "cut", resume=True, progress=False, log=lambda *_: None)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.history[-1]["valid"] == full.history[-1]["valid"]
    assert resumed.best_test == full.best_test
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


def test_training_beats_a_random_ranker_by_a_wide_margin(tmp_path):
    result = train(dict(FAST, epochs=3, learning_rate=0.01), tmp_path, progress=False, log=lambda *_: None)
    dataset = make_synthetic("tiny")
    train_items = UserItems.from_pairs(dataset.train, dataset.n_users)
    valid = UserItems.from_pairs(dataset.valid, dataset.n_users)
    g = torch.Generator().manual_seed(0)
    random_recall = np.mean([
        evaluate_embeddings(torch.randn(dataset.n_users, 8, generator=g), torch.randn(dataset.n_items, 8, generator=g),
                            train_items, valid, ks=(20,))["recall@20"]
        for _ in range(5)
    ])  # fmt: skip
    assert result.best_valid["recall@20"] > 2.0 * random_recall
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()


def test_early_stopping_and_best_epoch(tmp_path, monkeypatch):
    # Scripted valid recall@20: ties count as improvements (MMRec's rule), and training stops
    # after more than stopping_step evaluations without one.
    import mambarec_fast.training as training

    valid_values, calls = iter([0.3, 0.5, 0.5, 0.4, 0.4, 0.2, 0.9]), itertools.count()

    def fake_evaluate(*args):  # train() evaluates valid, then test, every epoch
        return {"recall@20": next(valid_values) if next(calls) % 2 == 0 else 0.0}

    monkeypatch.setattr(training, "evaluate_model", fake_evaluate)
    config = dict(FAST, epochs=10, stopping_step=1, train_batch_size=2048, mmd_weight=0.0, topk=[20])
    result = train(config, tmp_path, progress=False, log=lambda *_: None)
    assert result.stopped == "early_stopping"
    assert result.epochs_run == 5 and result.best_epoch == 2


def test_nan_loss_stops_training(tmp_path, monkeypatch):
    from mambarec_fast.reference import MambaRec

    monkeypatch.setattr(MambaRec, "calculate_loss", lambda self, *a: torch.tensor(float("nan"), requires_grad=True))
    result = train(dict(FAST, epochs=3), tmp_path, progress=False, log=lambda *_: None)
    assert result.stopped == "nan_loss" and result.history == []


def test_grid_selects_on_validation_and_reports_mean_and_std(tmp_path):
    report = run_grid(dict(FAST, epochs=1), {"mmd_weight": [0.0, 0.1]}, [1, 2], tmp_path, progress=False, log=lambda *_: None)
    assert report["selected_on"] == "valid/recall@20"
    means = [p["valid/recall@20"][0] for p in report["points"]]
    assert report["best"]["valid/recall@20"][0] == max(means)
    mean, std = report["best"]["test/recall@20"]
    assert 0 <= mean <= 1 and std >= 0


def test_bad_valid_metric_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="valid_metric"):
        train(dict(FAST, valid_metric="recall@15"), tmp_path, progress=False)


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="unknown impl"):
        build_model(dict(FAST, impl="nope"), make_synthetic("tiny"))


def test_features_carry_signal_on_the_synthetic_data(tmp_path):
    # The synthetic generator plants the latent factors of the interactions in both modalities: the
    # full model must beat the same model whose features are replaced by noise of the same shape.
    dataset = make_synthetic("tiny")
    rng = np.random.default_rng(0)
    noise = dataclasses.replace(dataset, features={m: rng.standard_normal(f.shape).astype(np.float32) for m, f in dataset.features.items()})
    write_mmrec(dataset, tmp_path / "real")
    write_mmrec(noise, tmp_path / "noise")
    config = dict(DEFAULTS, train_batch_size=256, epochs=8, seed=1)
    recall = {
        name: train(dict(config, data=str(tmp_path / name)), tmp_path / f"run_{name}", progress=False, log=lambda *_: None).best_valid["recall@20"]
        for name in ("real", "noise")
    }
    assert recall["real"] > recall["noise"] + 0.05, recall
