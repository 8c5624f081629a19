"""Training triples (user, positive item, negative item) for one epoch (SPEC §7), vectorised.

Each epoch shuffles the train rows and cuts them into batches in order; each row's negative is
uniform over the items that occur in the train split, redrawn while it is in the user's train
history. Rejection is done for all rows at once: draw, look the `(user, item)` keys up in the
sorted history keys, redraw only the rejected rows, until none is left.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .mmrec import DataError, as_pairs


class TrainSampler:
    """Batches of `(users, pos_items, neg_items)`, int64 CPU tensors `[b]`, `b <= batch_size`.

    train: int `[n, 2]` (user, item) rows (numpy or torch). All randomness comes from the
    `torch.Generator` handed to `epoch`, so restoring its state reproduces an epoch exactly.
    """

    def __init__(self, train, n_users: int, n_items: int, batch_size: int):
        self.train = as_pairs(train, n_users, n_items)
        if len(self.train) == 0:
            raise DataError("TrainSampler: the train split is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        users, items = self.train[:, 0], self.train[:, 1]
        self.n_users, self.n_items, self.batch_size = n_users, n_items, batch_size
        #: The negatives' support: every item with a train row, sorted.
        self.candidates = torch.unique(items)
        #: Sorted distinct `user * n_items + item` keys of the train history.
        self.history = torch.unique(users * n_items + items)
        per_user = torch.bincount(self.history // n_items, minlength=n_users)
        full = torch.nonzero(per_user == len(self.candidates)).flatten()
        if len(full):
            raise DataError(f"TrainSampler: user {int(full[0])} has interacted with all {len(self.candidates)} "
                            f"train items, so no negative can be drawn ({len(full)} such users)")

    def __len__(self) -> int:
        """Batches per epoch (the last one may be short)."""
        return -(-len(self.train) // self.batch_size)

    def _in_history(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.n_items + items
        pos = torch.searchsorted(self.history, keys).clamp_max(len(self.history) - 1)
        return self.history[pos] == keys

    def negatives(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One negative per entry of `users` (int64 `[n]`): uniform over the train items outside
        that user's history. Terminates: every user has at least one candidate outside it."""
        picks = torch.randint(len(self.candidates), users.shape, generator=generator)
        rejected = torch.nonzero(self._in_history(users, self.candidates[picks])).flatten()
        while len(rejected):
            picks[rejected] = torch.randint(len(self.candidates), rejected.shape, generator=generator)
            still = self._in_history(users[rejected], self.candidates[picks[rejected]])
            rejected = rejected[still]
        return self.candidates[picks]

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The batches of one epoch. The shuffle and every negative are drawn here, at the call,
        so the generator's state afterwards does not depend on how far the batches are consumed."""
        if generator.device.type != "cpu":
            raise ValueError(f"TrainSampler needs a CPU torch.Generator, got one on {generator.device}")
        order = torch.randperm(len(self.train), generator=generator)
        users, pos_items = self.train[order, 0], self.train[order, 1]
        neg_items = self.negatives(users, generator)
        size = self.batch_size
        return zip(users.split(size), pos_items.split(size), neg_items.split(size))
