"""Training a grid of one-hidden-layer ``mlp`` heads at once, side by side in one network.

The default sweep of the mlp varies ``hidden_sizes`` (one layer of 256, 512 or 1,024 units)
and ``dropout``. Everything else is shared: the standardised data, the validation split, the
mini-batches (the order of the rows has its own generator, seeded alike for every
architecture) and the schedule. So the G networks train as one: their first layers stacked
into one (sum of widths, d) matrix, one product per step; their second layers as one
block-diagonal matrix. Each keeps its own initial weights and dropout masks (from its own
generators, as its own fit draws them), its own early stopping, best epoch and history; each
model's gradient is that of its own mean loss, and AdamW works entry by entry, so the weights
equal those of G separate fits up to float rounding (wider products; the dropout rescaling
folded into the second layer's weights instead of the product).

On 2 cores (51,000 x 1,280 Fashion-MNIST features, the default grid of 9, bfloat16 products):
benchmarks/README.md, "Heads at scale" (session 8).
"""
from __future__ import annotations

import numpy as np

from featcache.train.heads._epochs import train_epochs
from featcache.train.heads._torch_grid import copies, prepare_grid
from featcache.train.heads._torch_train import AdamW, cpu_threads, keep_mask, training_dtype


class GridNet:
    """G networks ``Linear -> ReLU -> Dropout -> Linear`` of widths ``H_g`` side by side.

    ``weights``: the stacked first layers (sum H, d) and each second layer (k, H_g);
    ``biases``: the first layers' (sum H,) and the second layers' (G * k,), as
    :class:`~featcache.train.heads._torch_train.AdamW` takes them. Called on rows, gives the
    (rows, G, k) scores of every network.
    """

    def __init__(self, nets: list, dropouts: list[float]):
        import torch

        self.torch, self.dropouts = torch, dropouts
        self.widths = [int(net.weights[0].shape[0]) for net in nets]
        self.edges = np.cumsum([0, *self.widths]).tolist()
        self.k = int(nets[0].weights[1].shape[0])
        self.gens = [net.drop_gen for net in nets]
        self.W1 = torch.cat([net.weights[0].detach() for net in nets]).requires_grad_()
        self.b1 = torch.cat([net.biases[0].detach() for net in nets]).requires_grad_()
        self.W2 = [net.weights[1].detach().clone().requires_grad_() for net in nets]
        self.b2 = torch.cat([net.biases[1].detach() for net in nets]).requires_grad_()
        self.weights, self.biases = [self.W1, *self.W2], [self.b1, self.b2]
        self._masks: dict = {}

    def __call__(self, x, train: bool):
        torch = self.torch
        h = torch.relu(torch.addmm(self.b1, x, self.W1.to(x.dtype).t()))
        dropping = train and any(p > 0 for p in self.dropouts)
        if dropping:
            h = h * self._mask(len(x), h.dtype, h.device)
        second = [w / (1.0 - p) if dropping and p > 0 else w for w, p in zip(self.W2, self.dropouts)]
        scores = torch.addmm(self.b2, h, torch.block_diag(*second).to(h.dtype).t())
        return scores.view(len(x), len(self.widths), self.k)

    def _mask(self, rows: int, dtype, device):
        """Every network's dropout multipliers side by side (ones where it has none), each drawn
        from its own generator as its own fit draws them; one buffer per batch shape, rewritten
        at each step (the previous step's backward is done with it)."""
        key = (rows, dtype)
        if key not in self._masks:
            self._masks = {key: self.torch.ones((rows, self.edges[-1]), dtype=dtype, device=device)}
        mask = self._masks[key]
        for g, p in enumerate(self.dropouts):
            if p > 0:
                a, b = self.edges[g], self.edges[g + 1]
                keep_mask((rows, b - a), p, self.gens[g], device, dtype, out=mask[:, a:b])
        return mask

    def current(self, g: int) -> tuple:
        """Network ``g``'s (W1, b1, W2, b2), detached views of the stacked parameters."""
        a, b, k = self.edges[g], self.edges[g + 1], self.k
        return tuple(t.detach() for t in (self.W1[a:b], self.b1[a:b], self.W2[g], self.b2[g * k : (g + 1) * k]))

    def snapshot(self, g: int) -> tuple:
        """A copy of network ``g``'s parameters (its best epoch so far)."""
        return copies(*self.current(g))


def trains_together(heads: list) -> bool:
    """True when ``heads`` (mlp heads differing only in ``hidden_sizes`` and ``dropout``) can
    train as one :class:`GridNet`: one hidden layer each."""
    return all(len(h._hidden()) == 1 for h in heads)


def fit_mlp_grid(heads: list, X, y) -> list:
    """Fit ``heads`` (one-hidden-layer mlp heads that differ only in ``hidden_sizes`` and
    ``dropout``) on ``X``, ``y`` together; returns them, each fitted as its own ``fit`` would
    have (up to float rounding; a ``random_state`` of None is drawn once, for all of them)."""
    first = heads[0]
    prep = prepare_grid(heads, X, y)  # also the classes and feature count each network is made for
    nets, macs = [prep.net], [prep.macs]
    for h in heads[1:]:
        net, m = h._make_net(prep.seed, prep.device, prep.batch)
        nets.append(net)
        macs.append(m)
    if any(training_dtype(h.precision, prep.device, m) != prep.amp_dtype for h, m in zip(heads, macs)):
        for h in heads:  # their own fits would train in different precisions: one by one
            h.fit(X, y)
        return heads
    net = GridNet(nets, [h._dropout() for h in heads])
    optimizer = AdamW(net, lr=prep.lr, weight_decay=float(first.weight_decay))
    with cpu_threads(prep.device, sum(macs)):
        tracker = train_epochs(heads, prep, net, optimizer.step, net.snapshot)
    for g, h in enumerate(heads):
        (w1, b1, w2, b2), history = tracker.finish(g, net.current)
        h.coefs_ = [w.t().cpu().numpy().astype(np.float32) for w in (w1, w2)]
        h.intercepts_ = [b.cpu().numpy().astype(np.float32) for b in (b1, b2)]
        for key, value in history.items():
            setattr(h, key, value)
    return heads
