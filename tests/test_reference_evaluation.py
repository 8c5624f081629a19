"""The authors'-cost evaluation loop gives the same metrics as the one-forward evaluator."""
import torch

from mambarec_fast.evaluation import UserItems, evaluate_model
from mambarec_fast.reference.evaluation import evaluate_model as evaluate_model_per_batch


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.users, self.items, self.calls = torch.randn(30, 4, generator=g), torch.randn(17, 4, generator=g), 0

    def embeddings(self):
        self.calls += 1
        return self.users, self.items


def test_same_metrics_one_forward_per_batch():
    g = torch.Generator().manual_seed(1)
    train = UserItems.from_pairs(torch.stack([torch.randint(0, 30, (120,), generator=g), torch.randint(0, 17, (120,), generator=g)], 1).numpy(), 30)
    target = UserItems.from_pairs(torch.stack([torch.randint(0, 30, (40,), generator=g), torch.randint(0, 17, (40,), generator=g)], 1).numpy(), 30)
    fast, slow = CountingModel(), CountingModel()
    expected = evaluate_model(fast, train, target, ks=(3, 10), batch_size=7)
    got = evaluate_model_per_batch(slow, train, target, ks=(3, 10), batch_size=7)
    assert got == expected
    assert fast.calls == 1 and slow.calls == -(-target.users_with_items().numel() // 7)
