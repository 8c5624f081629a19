"""The fast MambaRec against the reference: same state_dict, losses, gradients, running statistics
and training metrics."""
import pytest
import torch

from mambarec_fast import MambaRec
from mambarec_fast.config import DEFAULTS
from mambarec_fast.data import build_graphs, make_synthetic
from mambarec_fast.reference import MambaRec as ReferenceMambaRec
from mambarec_fast.training import build_model, train

# float64 on the CPU: sums are taken in another order, so agreement is to rounding, not bits.
RTOL = 1e-10


@pytest.fixture(scope="module")
def tiny():
    dataset = make_synthetic("tiny")
    return dataset, build_graphs(dataset)


def _pair(tiny, **overrides):
    dataset, graphs = tiny
    config = dict(DEFAULTS, embedding_size=16, dropout=0.0, train_batch_size=256, **overrides)
    torch.manual_seed(0)
    reference = build_model(dict(config, impl="reference"), dataset, graphs).double()
    fast = build_model(dict(config, impl="fast"), dataset, graphs).double()
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def _batch(dataset, size=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(dataset.train), (size,), generator=g)
    users, pos = torch.from_numpy(dataset.train[rows.numpy()]).T
    return users, pos, torch.randint(0, dataset.n_items, (size,), generator=g)


def _assert_grads_close(reference, fast):
    ref_grads = dict(reference.named_parameters())
    scale = max(p.grad.abs().max() for p in reference.parameters() if p.grad is not None)
    for name, param in fast.named_parameters():
        # Biases in front of a train-mode BatchNorm have a true gradient of 0: compare absolutely.
        torch.testing.assert_close(param.grad, ref_grads[name].grad, rtol=RTOL, atol=RTOL * scale, msg=name)


def test_same_state_dict_names_and_shapes(tiny):
    reference, fast = _pair(tiny)
    assert {k: v.shape for k, v in reference.state_dict().items()} == {k: v.shape for k, v in fast.state_dict().items()}


@pytest.mark.parametrize("modalities", [("image", "text"), ("text",), ()])
def test_losses_gradients_and_running_stats_match_over_several_steps(tiny, modalities):
    dataset, graphs = tiny
    if modalities != ("image", "text"):
        dataset = type(dataset)(**{**dataset.__dict__, "features": {m: dataset.features[m] for m in modalities}})
        graphs = graphs._replace(items={m: graphs.items[m] for m in modalities})
    reference, fast = _pair((dataset, graphs))
    opt_ref = torch.optim.Adam(reference.parameters(), lr=1e-2)
    opt_fast = torch.optim.Adam(fast.parameters(), lr=1e-2)
    for step in range(3):
        users, pos, neg = _batch(dataset, seed=step)
        terms_ref = reference.loss_terms(users, pos, neg)
        terms_fast = fast.loss_terms(users, pos, neg)
        assert terms_ref.keys() == terms_fast.keys()
        for key in terms_ref:
            torch.testing.assert_close(terms_fast[key], terms_ref[key], rtol=RTOL, atol=1e-14, msg=key)
        for opt in (opt_ref, opt_fast):
            opt.zero_grad()
        sum(terms_ref.values()).backward()
        sum(terms_fast.values()).backward()
        _assert_grads_close(reference, fast)
        opt_ref.step()
        opt_fast.step()
    ref_state, fast_state = reference.state_dict(), fast.state_dict()
    for key, value in ref_state.items():
        if key.endswith("num_batches_tracked"):
            assert int(fast_state[key]) == int(value) == (6 if "mmd" in terms_ref else 3), key
        else:
            torch.testing.assert_close(fast_state[key], value, rtol=1e-8, atol=1e-12, msg=key)


def test_eval_embeddings_match(tiny):
    reference, fast = _pair(tiny)
    users, pos, neg = _batch(tiny[0])
    reference.calculate_loss(users, pos, neg)
    fast.calculate_loss(users, pos, neg)  # one step of running statistics in both
    reference.eval()
    fast.eval()
    for a, b in zip(reference.embeddings(), fast.embeddings()):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=1e-14)


def test_reference_checkpoint_loads_into_the_fast_model(tiny):
    reference, _ = _pair(tiny)
    dataset, graphs = tiny
    fast = MambaRec(dataset.n_users, dataset.n_items, {m: torch.from_numpy(f) for m, f in dataset.features.items()}, graphs, embedding_size=16).double()
    fast.load_state_dict(reference.state_dict(), strict=True)
    assert isinstance(fast, ReferenceMambaRec)


def test_move_and_cast_carry_the_graphs(tiny):
    _, fast = _pair(tiny)
    fast.float()
    assert all(g.dtype == torch.float32 for g in fast._graphs.values())
    users, pos, neg = _batch(tiny[0])
    assert fast.calculate_loss(users, pos, neg).dtype == torch.float32


def test_training_metrics_match_the_reference_with_dropout_on(tmp_path):
    # Same seed: the same dropout masks and negatives in both, so the metrics agree to rounding.
    config = dict(DEFAULTS, embedding_size=16, train_batch_size=1024, epochs=1, eval_batch_size=128)
    for seed in (1, 2, 3):
        runs = {
            impl: train(dict(config, impl=impl, seed=seed), tmp_path / f"{impl}{seed}", progress=False, log=lambda *_: None)
            for impl in ("reference", "fast")
        }
        ref, fast = runs["reference"].best_valid["recall@20"], runs["fast"].best_valid["recall@20"]
        assert abs(ref - fast) <= 1e-3, (seed, ref, fast)
