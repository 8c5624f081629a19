"""Ablation switches change exactly what they say; `ablate` trains the rows and writes the table."""
import csv
import json

import pytest
import torch

import mambarec_fast.data.graphs as graphs_module
from mambarec_fast.ablation import ROWS, parse_rows
from mambarec_fast.checkpoint import load_checkpoint
from mambarec_fast.cli import main
from mambarec_fast.config import DEFAULTS
from mambarec_fast.data import build_graphs, make_synthetic
from mambarec_fast.training import build_model, prepare

IMPLS = ("reference", "fast")
SMALL = dict(DEFAULTS, embedding_size=16, train_batch_size=256, dropout=0.0)


@pytest.fixture(scope="module")
def tiny():
    dataset = make_synthetic("tiny")
    return dataset, build_graphs(dataset)


def _model(tiny, impl, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(dict(SMALL, impl=impl, **overrides), *tiny).double()


def _batch(dataset, size=128):
    g = torch.Generator().manual_seed(1)
    users, pos = torch.from_numpy(dataset.train[torch.randint(0, len(dataset.train), (size,), generator=g).numpy()]).T
    return users, pos, torch.randint(0, dataset.n_items, (size,), generator=g)


@pytest.mark.parametrize("impl", IMPLS)
def test_dream_false_drops_the_blocks_and_feeds_the_projection_to_the_layernorm(tiny, impl):
    full, ablated = _model(tiny, impl), _model(tiny, impl, dream=False)
    assert any(k.startswith("dream_") for k in full.state_dict())
    assert not any(k.startswith("dream_") for k in ablated.state_dict())
    dropped = {k for k in full.state_dict() if not k.startswith("dream_")}
    assert dropped == set(ablated.state_dict())  # nothing else changes
    v = ablated.image_embedding.weight
    torch.testing.assert_close(ablated.encode("image"), ablated.image_trs(ablated.image_reduce(v)), rtol=1e-12, atol=1e-12)
    t = ablated.text_embedding.weight
    torch.testing.assert_close(ablated.encode("text"), ablated.text_trs(t), rtol=0, atol=0)


def test_dream_false_fast_matches_reference(tiny):
    reference = _model(tiny, "reference", dream=False)
    fast = _model(tiny, "fast", dream=False)
    fast.load_state_dict(reference.state_dict())
    batch = _batch(tiny[0])
    ref_terms, fast_terms = reference.loss_terms(*batch), fast.loss_terms(*batch)
    assert set(ref_terms) == set(fast_terms) == {"bpr", "reg", "cl", "mmd"}
    for name in ref_terms:
        torch.testing.assert_close(fast_terms[name], ref_terms[name], rtol=1e-10, atol=0, msg=name)
    sum(ref_terms.values()).backward()
    sum(fast_terms.values()).backward()
    ref_grads = dict(reference.named_parameters())
    for name, param in fast.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name].grad, rtol=1e-9, atol=1e-12, msg=name)


def test_dream_must_be_a_bool(tiny):
    with pytest.raises(TypeError, match="dream must be True or False"):
        build_model(dict(SMALL, dream="no"), *tiny)


@pytest.mark.parametrize("impl", IMPLS)
def test_mmd_weight_zero_skips_the_term_and_the_second_dream_update(tiny, impl):
    full, ablated = _model(tiny, impl), _model(tiny, impl, mmd_weight=0)
    ablated.load_state_dict(full.state_dict())
    batch = _batch(tiny[0])
    full_terms, ablated_terms = full.loss_terms(*batch), ablated.loss_terms(*batch)
    assert "mmd" in full_terms and "mmd" not in ablated_terms
    assert float(full_terms["mmd"].detach()) > 0
    for name in ("bpr", "reg", "cl"):  # the forward is the same: the switch only drops the term
        torch.testing.assert_close(ablated_terms[name], full_terms[name], rtol=0, atol=0, msg=name)
    # One DREAM call per step (one BatchNorm update) instead of the authors' two.
    assert int(full.dream_image.conv_cat[1].num_batches_tracked) == 2
    assert int(ablated.dream_image.conv_cat[1].num_batches_tracked) == 1
    assert int(ablated.dream_text.conv_cat[1].num_batches_tracked) == 1


def test_mmd_weight_zero_computes_no_mmd(tiny, monkeypatch):
    import mambarec_fast.model as fast_model
    import mambarec_fast.reference.model as reference_model

    def forbidden(*args, **kwargs):
        raise AssertionError("MMD computed with mmd_weight=0")

    monkeypatch.setattr(fast_model, "mmd", forbidden)
    monkeypatch.setattr(reference_model, "mmd_loss", forbidden)
    for impl in IMPLS:
        _model(tiny, impl, mmd_weight=0).loss_terms(*_batch(tiny[0]))


@pytest.mark.parametrize("impl", IMPLS)
def test_cl_loss_zero_zeroes_only_the_contrastive_term(tiny, impl):
    full, ablated = _model(tiny, impl), _model(tiny, impl, cl_loss=0)
    ablated.load_state_dict(full.state_dict())
    batch = _batch(tiny[0])
    full_terms, ablated_terms = full.loss_terms(*batch), ablated.loss_terms(*batch)
    assert full_terms["cl"].item() > 0 and ablated_terms["cl"].item() == 0
    for name in ("bpr", "reg", "mmd"):
        torch.testing.assert_close(ablated_terms[name], full_terms[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_reduction_factor_one_maps_the_image_features_straight_to_d(tiny, impl):
    full, ablated = _model(tiny, impl), _model(tiny, impl, reduction_factor=1)
    image_dim = tiny[0].features["image"].shape[1]
    assert full.state_dict()["image_reduce.weight"].shape == (image_dim // 8, image_dim)
    assert not any(k.startswith("image_reduce") for k in ablated.state_dict())
    assert ablated.image_trs.weight.shape == (16, image_dim)
    ablated.eval()
    expected = ablated.dream_image(ablated.image_trs(ablated.image_embedding.weight))
    torch.testing.assert_close(ablated.encode("image"), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("modalities", [["image"], ["text"], []])
def test_modalities_load_and_build_only_what_is_named(monkeypatch, modalities):
    built = []
    real = graphs_module.cached_knn_graph
    monkeypatch.setattr(graphs_module, "cached_knn_graph", lambda f, *a, **k: built.append(f.shape) or real(f, *a, **k))
    dataset, model = prepare(dict(SMALL, modalities=modalities))
    assert sorted(dataset.features) == sorted(modalities)
    assert len(built) == len(modalities)  # no kNN graph for an absent modality
    keys = set(model.state_dict())
    for m in ("image", "text"):
        present = m in modalities
        assert (f"{m}_embedding.weight" in keys) == present and hasattr(model, f"item_{m}") == present
    loss = model.calculate_loss(*_batch(dataset))
    loss.backward()
    assert torch.isfinite(loss)


def test_mmd_weight_is_a_no_op_with_one_modality(tiny):
    dataset, graphs = tiny
    text_only = type(dataset)(**{**dataset.__dict__, "features": {"text": dataset.features["text"]}})
    text_graphs = graphs._replace(items={"text": graphs.items["text"]})
    a = _model((text_only, text_graphs), "fast", modalities=["text"])
    b = _model((text_only, text_graphs), "fast", modalities=["text"], mmd_weight=0)
    b.load_state_dict(a.state_dict())
    batch = _batch(dataset)
    a_terms, b_terms = a.loss_terms(*batch), b.loss_terms(*batch)
    assert set(a_terms) == set(b_terms) == {"bpr", "reg", "cl"}
    assert all(torch.equal(a_terms[k], b_terms[k]) for k in a_terms)


def test_every_row_builds_from_its_overrides(tiny):
    for name, (label, overrides) in ROWS.items():
        assert set(overrides) <= set(DEFAULTS), name
    assert parse_rows(None) == list(ROWS) == parse_rows("all")
    assert parse_rows("lightgcn, full") == ["lightgcn", "full"]
    with pytest.raises(ValueError, match="unknown ablation rows"):
        parse_rows("full,bogus")


def test_ablate_command_writes_the_table_and_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "ablation"
    argv = ["ablate", "synthetic:tiny", "--seeds", "1,2", "--rows", "full,no_dream,lightgcn", "--out", str(out),
            "--set", "epochs=1", "--set", "embedding_size=16", "--set", "train_batch_size=1024", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    with open(out / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["row"] for r in rows] == ["full", "no_dream", "lightgcn"]
    assert all(r["seeds"] == "1 2" and float(r["epochs"]) == 1 for r in rows)
    for r in rows:
        assert 0 < float(r["recall@20_mean"]) <= 1 and float(r["recall@20_std"]) >= 0
    table = (out / "table.md").read_text()
    assert table in printed and "w/o DREAM" in table and "LightGCN" in table and "±" in table
    config = json.loads((out / "no_dream" / "seed2" / "config.json").read_text())
    assert config["dream"] is False and config["seed"] == 2
    assert not any(k.startswith("dream_") for k in load_checkpoint(out / "no_dream" / "seed2" / "best.pt")["model"])

    stamp = (out / "full" / "seed1" / "result.json").stat().st_mtime_ns
    assert main(argv) == 0  # a rerun reuses the finished runs: same table, nothing retrained
    assert (out / "table.md").read_text() == table
    assert (out / "full" / "seed1" / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "extra, message",
    [(["--rows", "full,nope"], "unknown ablation rows"), (["--seeds", "1,x"], "--seeds expects"),
     (["--set", "mmd_weight=[0.1,0.2]"], "drop the grid axes"), (["--set", "model=nope"], "unknown model")],
)  # fmt: skip
def test_ablate_errors_are_clean(tmp_path, capsys, extra, message):
    assert main(["ablate", "synthetic:tiny", "--out", str(tmp_path), "--rows", "full", *extra]) == 2
    assert message in capsys.readouterr().err
