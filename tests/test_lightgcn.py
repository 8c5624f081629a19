"""LightGCN: propagation against a dense statement, its loss, fast = reference, and training."""
import json

import pytest
import torch
import torch.nn.functional as F

from mambarec_fast.cli import main
from mambarec_fast.config import DEFAULTS
from mambarec_fast.data import build_graphs, make_synthetic
from mambarec_fast.lightgcn import LightGCN
from mambarec_fast.reference.lightgcn import LightGCN as ReferenceLightGCN
from mambarec_fast.training import build_model, prepare, train

CLASSES = (ReferenceLightGCN, LightGCN)


@pytest.fixture(scope="module")
def tiny():
    dataset = make_synthetic("tiny")
    return dataset, build_graphs(dataset)


def _model(tiny, cls, n_layers=4, seed=0):
    dataset, graphs = tiny
    torch.manual_seed(seed)
    return cls(dataset.n_users, dataset.n_items, graphs.adj, embedding_size=16, n_layers=n_layers, train_batch_size=64).double()


def _batch(dataset, size=64):
    g = torch.Generator().manual_seed(3)
    users, pos = torch.from_numpy(dataset.train[torch.randint(0, len(dataset.train), (size,), generator=g).numpy()]).T
    return users, pos, torch.randint(0, dataset.n_items, (size,), generator=g)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("n_layers", [0, 1, 4])
def test_embeddings_are_the_layer_mean_over_the_dense_normalised_graph(tiny, cls, n_layers):
    dataset, graphs = tiny
    model = _model(tiny, cls, n_layers)
    # Direct statement: Â = D^-1/2 A D^-1/2 from the binary interaction matrix, mean of Â^l E0.
    a = torch.zeros(dataset.n_users + dataset.n_items, dataset.n_users + dataset.n_items, dtype=torch.float64)
    users, items = torch.from_numpy(dataset.train).T
    a[users, dataset.n_users + items] = a[dataset.n_users + items, users] = 1.0
    degree = a.sum(dim=1)
    inv = torch.where(degree > 0, degree.clamp_min(1).rsqrt(), torch.zeros_like(degree))
    adj = inv[:, None] * a * inv[None, :]
    torch.testing.assert_close(graphs.adj.to_dense().double(), adj, rtol=1e-6, atol=1e-7)  # the graph is float32
    ego = torch.cat([model.user_embedding.weight, model.item_id_embedding.weight]).detach()
    model_adj = model.adj.to_dense()
    expected = sum(torch.linalg.matrix_power(model_adj, l) @ ego for l in range(n_layers + 1)) / (n_layers + 1)
    user_emb, item_emb = model.embeddings()
    torch.testing.assert_close(torch.cat([user_emb, item_emb]), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", CLASSES)
def test_loss_is_bpr_on_the_mean_plus_l2_on_the_batch_ego_embeddings(tiny, cls):
    model = _model(tiny, cls)
    model.reg_weight = 0.5  # large enough that a wrong penalty cannot hide in rounding
    users, pos, neg = _batch(tiny[0])
    terms = model.loss_terms(users, pos, neg)
    user_all, item_all = model.embeddings()
    diff = (user_all[users] * (item_all[pos] - item_all[neg])).sum(dim=1)
    torch.testing.assert_close(terms["bpr"], -F.logsigmoid(diff).mean(), rtol=1e-12, atol=0)
    u0, i0 = model.user_embedding.weight, model.item_id_embedding.weight
    norms = u0[users].norm() ** 2 + i0[pos].norm() ** 2 + i0[neg].norm() ** 2
    torch.testing.assert_close(terms["reg"], 0.5 * 0.5 * norms / 64, rtol=1e-12, atol=0)
    # The penalty acts on the ego rows of the batch only.
    model.zero_grad()
    terms["reg"].backward()
    touched = torch.zeros(model.n_users, dtype=torch.bool)
    touched[users] = True
    assert model.user_embedding.weight.grad[~touched].abs().max() == 0
    assert model.user_embedding.weight.grad[touched].abs().min() > 0


def test_fast_matches_reference_in_loss_and_gradients(tiny):
    reference, fast = _model(tiny, ReferenceLightGCN), _model(tiny, LightGCN, seed=1)
    fast.load_state_dict(reference.state_dict())
    assert set(fast.state_dict()) == {"user_embedding.weight", "item_id_embedding.weight"}
    batch = _batch(tiny[0])
    ref_loss, fast_loss = reference.calculate_loss(*batch), fast.calculate_loss(*batch)
    torch.testing.assert_close(fast_loss, ref_loss, rtol=1e-12, atol=0)
    ref_loss.backward()
    fast_loss.backward()
    for (name, p_ref), p_fast in zip(reference.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-10, atol=1e-14, msg=name)


def test_bad_arguments_are_rejected(tiny):
    dataset, graphs = tiny
    with pytest.raises(ValueError, match="adj must be"):
        ReferenceLightGCN(dataset.n_users + 1, dataset.n_items, graphs.adj)
    with pytest.raises(ValueError, match="n_layers"):
        LightGCN(dataset.n_users, dataset.n_items, graphs.adj, n_layers=-1)


def test_config_selects_lightgcn_loads_no_features_and_trains(tmp_path, capsys):
    config = dict(DEFAULTS, model="lightgcn", n_ui_layers=2, embedding_size=16, train_batch_size=1024, epochs=3, learning_rate=0.01)
    dataset, model = prepare(config)
    assert type(model) is LightGCN and model.n_layers == 2 and dataset.features == {}
    assert type(build_model(dict(config, impl="reference"), dataset)) is ReferenceLightGCN
    result = train(config, tmp_path, progress=False, log=lambda *_: None)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] and result.best_valid["recall@20"] > 0.25  # random: about 0.1
    assert main(["evaluate", str(tmp_path / "best.pt")]) == 0  # checkpoints reload as LightGCN
    assert json.loads(capsys.readouterr().out)["valid"]["recall@20"] == pytest.approx(result.best_valid["recall@20"], abs=1e-12)
    with pytest.raises(ValueError, match="unknown model"):
        prepare(dict(config, model="mf"))
