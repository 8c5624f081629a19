"""The reference MambaRec (SPEC §3-6) against a dense, independently written statement of the math."""
import pytest
import torch
import torch.nn.functional as F

from mambarec_fast.reference import MambaRec, MambaRecGraphs

U, I, D = 6, 9, 8


def _graphs(seed=0):
    g = torch.Generator().manual_seed(seed)
    R = (torch.rand(U, I, generator=g) < 0.4).double()
    R[0, 0] = 1.0
    A = torch.zeros(U + I, U + I, dtype=torch.float64)
    A[:U, U:], A[U:, :U] = R, R.T
    deg = A.sum(1)
    dinv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    A_hat = dinv[:, None] * A * dinv[None, :]
    items = {m: torch.rand(I, I, generator=g, dtype=torch.float64) * (torch.rand(I, I, generator=g) < 0.3) for m in ("image", "text")}
    dense = {"adj": A_hat, "ui": A_hat[:U, U:], "items": items}
    sparse = MambaRecGraphs(A_hat.to_sparse(), A_hat[:U, U:].to_sparse(), {m: s.to_sparse() for m, s in items.items()})
    return dense, sparse


def _model(modalities=("image", "text"), **kw):
    torch.manual_seed(0)
    dense, sparse = _graphs()
    feats = {"image": torch.randn(I, 32), "text": torch.randn(I, 12)}
    feats = {m: feats[m] for m in modalities}
    kw.setdefault("embedding_size", D)
    kw.setdefault("reduction_factor", 4)
    kw.setdefault("dropout", 0.0)
    model = MambaRec(U, I, feats, sparse, train_batch_size=5, **kw).double()
    return model, dense


def _dense_forward(model, dense):
    """SPEC §5 written with dense matrices, sharing only the model's submodules."""
    e0 = torch.cat([model.user_embedding.weight, model.item_id_embedding.weight])
    layers, e = [e0], e0
    for _ in range(model.n_ui_layers):
        e = dense["adj"] @ e
        layers.append(e)
    content = sum(layers) / len(layers)
    views = {}
    for m in model.modalities:
        if m == "image":
            h = model.dream_image(model.image_trs(model.image_reduce(model.image_embedding.weight)))
            x = model.item_id_embedding.weight * torch.sigmoid(model.gate_v[0](model.norm(h)))
        else:
            h = model.dream_text(model.text_trs(model.text_embedding.weight))
            x = model.item_id_embedding.weight * torch.sigmoid(model.gate_t[0](model.norm(h)))
        for _ in range(model.n_layers):
            x = dense["items"][m] @ x
        views[m] = torch.cat([dense["ui"] @ x, x])
    if len(views) == 2:
        q = lambda e: model.query_common[2](torch.tanh(model.query_common[0](e)))  # noqa: E731
        a = torch.softmax(torch.cat([q(views["image"]), q(views["text"])], 1), 1)
        common = a[:, :1] * views["image"] + a[:, 1:] * views["text"]
        sep_v = (views["image"] - common) * torch.sigmoid(model.gate_image_prefer[0](content))
        sep_t = (views["text"] - common) * torch.sigmoid(model.gate_text_prefer[0](content))
        side = (sep_v + sep_t + common) / 3
    elif len(views) == 1:
        side = next(iter(views.values()))
    else:
        side = content
    return content + side, side, content


@pytest.mark.parametrize("modalities", [("image", "text"), ("image",), ("text",), ()])
def test_forward_matches_dense_statement(modalities):
    model, dense = _model(modalities)
    model.eval()
    out = model()
    expected, side, content = _dense_forward(model, dense)
    torch.testing.assert_close(torch.cat([out.users, out.items]), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.side, side, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.content, content, rtol=1e-12, atol=1e-12)


def _manual_loss(model, dense, users, pos, neg):
    all_emb, side, content = _dense_forward(model, dense)
    u, ip, ineg = all_emb[users], all_emb[U + pos], all_emb[U + neg]
    bpr = -torch.log(torch.sigmoid((u * ip).sum(1) - (u * ineg).sum(1))).mean()
    reg = 1e-4 * 0.5 * (u.norm() ** 2 + ip.norm() ** 2 + ineg.norm() ** 2) / 5

    def nce(a, b):
        a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        logits = a @ b.T / 0.2
        return (-(logits.diag() - torch.logsumexp(logits, 1))).mean()

    cl = nce(side[U + pos], content[U + pos]) + nce(side[users], content[users])
    total = bpr + reg + 0.01 * cl
    if len(model.modalities) == 2:
        v = F.normalize(model.image_dream()[pos], dim=1)
        t = F.normalize(model.text_dream()[pos], dim=1)
        k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / 2.0)  # noqa: E731
        total = total + 0.1 * (k(v, v).mean() + k(t, t).mean() - 2 * k(v, t).mean())
    return total


@pytest.mark.parametrize("modalities", [("image", "text"), ("text",), ()])
def test_loss_matches_manual_computation(modalities):
    model, dense = _model(modalities)
    model.train()
    users, pos, neg = torch.tensor([0, 1, 2, 2, 5]), torch.tensor([0, 3, 4, 4, 8]), torch.tensor([1, 2, 7, 6, 0])
    expected = _manual_loss(model, dense, users, pos, neg)
    loss = model.calculate_loss(users, pos, neg)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)


def test_mmd_term_calls_each_dream_twice_per_step():
    model, _ = _model()
    model.train()
    model.calculate_loss(torch.tensor([0, 1]), torch.tensor([0, 3]), torch.tensor([1, 2]))
    for dream in (model.dream_image, model.dream_text):
        assert int(dream.branch1[1].num_batches_tracked) == 2
    model, _ = _model(mmd_weight=0.0)
    model.train()
    terms = model.loss_terms(torch.tensor([0, 1]), torch.tensor([0, 3]), torch.tensor([1, 2]))
    assert "mmd" not in terms
    assert int(model.dream_image.branch1[1].num_batches_tracked) == 1


def test_gradients_reach_every_parameter():
    model, _ = _model()
    model.train()
    model.calculate_loss(torch.tensor([0, 1, 3]), torch.tensor([0, 3, 5]), torch.tensor([1, 2, 6])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    # 3x3 dilated convs on 1x1 maps: only the centre taps see data, the rest get zero gradient.
    assert missing == []
    w = model.dream_image.branch2[0].weight.grad
    assert torch.count_nonzero(w[:, :, 0, 0]) == 0 and torch.count_nonzero(w[:, :, 1, 1]) > 0


def test_state_dict_uses_the_authors_names():
    model, _ = _model()
    top = {k.split(".")[0] for k in model.state_dict()}
    assert top == {
        "user_embedding", "item_id_embedding", "image_embedding", "text_embedding", "image_reduce",
        "image_trs", "text_trs", "dream_image", "dream_text", "norm", "query_common", "gate_v", "gate_t",
        "gate_image_prefer", "gate_text_prefer",
    }  # fmt: skip
    assert tuple(model.state_dict()["image_embedding.weight"].shape) == (I, 32)
    assert tuple(model.state_dict()["image_reduce.weight"].shape) == (32 // 4, 32)


def test_reduction_factor_one_maps_features_directly():
    model, _ = _model(reduction_factor=1)
    assert model.image_reduce is None and "image_reduce.weight" not in model.state_dict()
    assert tuple(model.image_trs.weight.shape) == (D, 32)


def test_features_are_trained_and_initialised_from_the_raw_features():
    torch.manual_seed(0)
    _, sparse = _graphs()
    feat = torch.randn(I, 32)
    model = MambaRec(U, I, {"image": feat}, sparse, embedding_size=D)
    assert model.image_embedding.weight.requires_grad
    torch.testing.assert_close(model.image_embedding.weight.detach(), feat)


@pytest.mark.parametrize(
    "features, message",
    [({"audio": torch.randn(I, 4)}, "unknown modalities"), ({"image": torch.randn(I + 1, 4)}, r"\[9, D\]")],
)
def test_bad_features_are_rejected(features, message):
    _, sparse = _graphs()
    with pytest.raises(ValueError, match=message):
        MambaRec(U, I, features, sparse)
