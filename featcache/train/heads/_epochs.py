"""The epoch loop of the torch heads: one head's fit, or a grid of G models trained at once.

A fit is a grid of one. Every model of a grid sees the same mini-batches (the plan's, in the
order of the shared generator) and the same learning-rate schedule; ``forward(x, train)``
gives every model's (rows, G, k) scores, and each model's gradient is that of its own mean
cross-entropy (the sum of the G losses is differentiated, and no parameter is shared). Each
model keeps its own early stopping (patience counts epochs without a better validation
accuracy, as scikit-learn's ``MLPClassifier``), best epoch and history
(:class:`Tracker`); the loop ends when every model has stopped or the planned epochs are done.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from featcache.errors import HeadError
from featcache.train.heads._torch_train import AdamW, DataPlan, lr_factor, torch_module, training_autocast


def check_finite_loss(head, loss: float, epoch: int) -> None:
    """HeadError naming the learning rate when an epoch's mean training loss is not finite."""
    if not math.isfinite(loss):
        raise HeadError(
            f"{type(head).__name__} training diverged (loss {loss}) at epoch {epoch} "
            f"with lr={head.lr}; expected a finite loss; lower lr"
        )


class Tracker:
    """Per-model early stopping: histories, best weights and whether it still trains. The
    weights kept are those of the best validation accuracy, ties going to the lower
    validation loss."""

    def __init__(self, heads: list):
        self.heads = heads
        n = len(heads)
        self.losses = [[] for _ in range(n)]
        self.val_scores = [[] for _ in range(n)]
        self.val_losses = [[] for _ in range(n)]
        self.best: list[Any] = [None] * n
        self.best_acc, self.best_loss = [-1.0] * n, [math.inf] * n
        self.best_epoch, self.stale, self.last_epoch = [0] * n, [0] * n, [0] * n
        self.active = list(range(n))

    def record(self, epoch: int, losses: list[float], scores, snapshot) -> None:
        """One epoch's training losses (and validation (acc, loss) per model, or None);
        ``snapshot(g)``: a copy of model ``g``'s weights, taken when it improves."""
        for g in self.active:
            self.losses[g].append(losses[g])
            self.last_epoch[g] = epoch
            check_finite_loss(self.heads[g], losses[g], epoch)
        if scores is None:
            return
        for g in list(self.active):
            acc, vloss = scores[g]
            self.val_scores[g].append(acc)
            self.val_losses[g].append(vloss)
            improved = acc > self.best_acc[g]
            if improved or (acc == self.best_acc[g] and vloss < self.best_loss[g]):
                self.best[g] = snapshot(g)
                self.best_acc[g], self.best_loss[g], self.best_epoch[g] = acc, vloss, epoch
            self.stale[g] = 0 if improved else self.stale[g] + 1
            if self.stale[g] >= int(self.heads[g].patience):
                self.active.remove(g)

    def finish(self, g: int, current) -> tuple[Any, dict]:
        """Model ``g``'s weights of its best epoch (``current(g)`` without one) and its history
        attributes."""
        weights = self.best[g] if self.best[g] is not None else current(g)
        history = {
            "n_epochs_": int(self.last_epoch[g]),
            "best_epoch_": int(self.best_epoch[g] if self.best[g] is not None else self.last_epoch[g]),
            "loss_curve_": np.asarray(self.losses[g], dtype=np.float64),
            "validation_scores_": np.asarray(self.val_scores[g], dtype=np.float64),
            "validation_loss_curve_": np.asarray(self.val_losses[g], dtype=np.float64),
        }
        return weights, history


def cross_entropy(logits, y):
    """(rows, G) cross-entropy of every model's (rows, G, k) scores, in float32."""
    torch = torch_module()
    return torch.nn.functional.cross_entropy(
        logits.float().permute(0, 2, 1), y[:, None].expand(-1, logits.shape[1]), reduction="none")


def mean_losses(logits, y):
    """(G,) mean cross-entropy of each model's (rows, G, k) scores over the rows."""
    if logits.shape[1] == 1:  # one model (a head's own fit): torch's mean reduction, fewer kernels
        return torch_module().nn.functional.cross_entropy(logits[:, 0].float(), y).view(1)
    return cross_entropy(logits, y).mean(dim=0)


def validate(forward, G: int, plan: DataPlan, amp_dtype) -> list[tuple[float, float]]:
    """Validation (accuracy, mean cross-entropy) of every model (``forward(x)``: (rows, G, k)
    scores), under the training autocast (on 2 AMX cores a float32 validation pass was 4 % of
    a default mlp fit at scale)."""
    torch = plan.torch
    loss_sum, correct, count = torch.zeros(G, dtype=torch.float64), torch.zeros(G, dtype=torch.int64), 0
    with torch.no_grad():
        for x, y in plan.validation_batches():
            with training_autocast(plan, amp_dtype):
                logits = forward(x)
            loss_sum += cross_entropy(logits, y).sum(dim=0).double().cpu()
            correct += (logits.argmax(dim=2) == y[:, None]).sum(dim=0).cpu()
            count += len(y)
    return [(int(correct[g]) / max(count, 1), float(loss_sum[g]) / max(count, 1)) for g in range(G)]


def train_epochs(heads: list, prep, forward, step, snapshot) -> Tracker:
    """Train the models of ``heads`` on ``prep``'s data, batches and planned epochs (the heads'
    shared ``lr_schedule``): ``forward(x, train)`` gives every model's (rows, G, k) scores,
    ``step(factor)`` updates every model with the schedule's share of its rate and clears the
    gradients, ``snapshot(g)`` copies model ``g``'s weights. Each model's gradient is that of
    its own mean loss; each stops early on its own (the returned :class:`Tracker`)."""
    plan, torch, G = prep.plan, prep.plan.torch, len(heads)
    tracker = Tracker(heads)
    step_no, total_steps = 0, prep.epochs * plan.steps_per_epoch(prep.batch)
    for epoch in range(1, prep.epochs + 1):
        total, seen = torch.zeros(G, device=plan.device), 0
        for x, y in plan.train_batches(prep.gen, prep.batch):
            with training_autocast(plan, prep.amp_dtype):
                logits = forward(x, True)
            losses = mean_losses(logits, y)
            losses.sum().backward()
            step(lr_factor(heads[0].lr_schedule, step_no, total_steps))
            step_no += 1
            total += losses.detach() * len(y)  # accumulated on the device: no sync per batch
            seen += len(y)
        per_model = (total / max(seen, 1)).tolist()
        scores = None
        if plan.has_val:
            scores = validate(lambda x: forward(x, False), G, plan, prep.amp_dtype)
        tracker.record(epoch, per_model, scores, snapshot)
        if plan.has_val and not tracker.active:
            break
    return tracker


def fit_one(head, prep) -> dict[str, Any]:
    """Train ``prep.net`` (a :class:`~featcache.train.heads._torch_train.Net`) as a grid of
    one with AdamW; leaves the best epoch's weights in it and returns the head's history
    attributes."""
    net = prep.net
    optimizer = AdamW(net, lr=prep.lr, weight_decay=float(head.weight_decay))
    tracker = train_epochs([head], prep, lambda x, train: net(x, train)[:, None], optimizer.step,
                           lambda g: net.snapshot())
    best, history = tracker.finish(0, lambda g: None)
    if best is not None:
        net.restore(best)
    return history
