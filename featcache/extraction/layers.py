"""Reading one layer of a frozen network: hooks, early stop, pooling.

``penultimate`` is the input of the final classification layer (found by
:func:`final_layer_name`), or, for a model with timm's feature API,
``forward_head(forward_features(x), pre_logits=True)``; any other value names a module
(``model.named_modules()``), whose output is read. The forward pass stops as
soon as the layer has been read, so later layers cost nothing.
"""
from __future__ import annotations

import torch
from torch import nn

from featcache.errors import FeatcacheError, UnknownNameError, WeightsError
from featcache.specs import POOLS


class _Stop(Exception):
    pass


def pool_features(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) by avg/max; (N, L, C) tokens -> (N, C); none flattens."""
    if x.ndim == 2:
        return x
    if pool == "none":
        return x.flatten(1)
    dims = tuple(range(2, x.ndim)) if x.ndim == 4 else (1,)
    return x.mean(dim=dims) if pool == "avg" else x.amax(dim=dims)


def final_layer_name(module: nn.Module) -> str:
    """The final classification layer: the last Linear (or, for all-conv nets, the last Conv2d)."""
    last_linear = last_conv = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            last_linear = name
        elif isinstance(m, nn.Conv2d):
            last_conv = name
    found = last_linear or last_conv
    if found is None:
        raise WeightsError(f"{type(module).__name__} has no Linear or Conv2d layer to read features before")
    return found


def penultimate_dim(module: nn.Module) -> int:
    m = module.get_submodule(final_layer_name(module))
    return int(m.in_features if isinstance(m, nn.Linear) else m.in_channels)


def layer_names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_modules() if n]


def has_pre_logits(module: nn.Module) -> bool:
    """True for models with timm's feature API (``forward_features``, ``forward_head(pre_logits=)``)."""
    return callable(getattr(module, "forward_features", None)) and callable(getattr(module, "forward_head", None))


class FeatureExtractor(nn.Module):
    """Wraps a frozen backbone; ``forward(images) -> (N, D)`` features of one layer."""

    def __init__(self, module: nn.Module, layer: str = "penultimate", pool: str = "avg"):
        super().__init__()
        if pool not in POOLS:
            raise UnknownNameError("pooling", pool, POOLS)
        self.module = module.eval().requires_grad_(False)
        self.pool = pool
        self.layer = layer
        self.pre_logits = layer == "penultimate" and has_pre_logits(module)
        self._captured: torch.Tensor | None = None
        if self.pre_logits:  # timm's own definition of the penultimate features: no hook needed
            self.target, self._read_input = "forward_head(pre_logits=True)", True
            return
        if layer == "penultimate":
            target, self._read_input = final_layer_name(module), True
        else:
            names = layer_names(module)
            if layer not in names:
                raise UnknownNameError(
                    f"layer of {type(module).__name__}", layer, names,
                    hint="use 'penultimate' or a module name from model.named_modules()",
                )
            target, self._read_input = layer, False
        self.target = target
        sub = module.get_submodule(target)
        if self._read_input:
            sub.register_forward_pre_hook(self._pre_hook)
        else:
            sub.register_forward_hook(self._hook)

    def _pre_hook(self, _m, inputs):
        self._captured = inputs[0]
        raise _Stop

    def _hook(self, _m, _inputs, output):
        self._captured = output[0] if isinstance(output, (tuple, list)) else output
        raise _Stop

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.pre_logits:
            x = self.module.forward_head(self.module.forward_features(images), pre_logits=True)
            return pool_features(x, self.pool).float()
        self._captured = None
        try:
            self.module(images)
        except _Stop:
            pass
        x, self._captured = self._captured, None
        if x is None:
            raise self._not_reached(images)
        return pool_features(x, self.pool).float()

    def reached_layers(self, images: torch.Tensor) -> list[str]:
        """Module names that a full forward pass on ``images`` runs, in the order they finish."""
        reached: list[str] = []
        handles = [m.register_forward_hook(lambda _m, _i, _o, n=n: reached.append(n))
                   for n, m in self.module.named_modules() if n]
        try:
            self.module(images)
        except _Stop:  # our own hook on the target (it did not fire before, so it will not now)
            pass
        finally:
            for h in handles:
                h.remove()
        return list(dict.fromkeys(reached))

    def _not_reached(self, images: torch.Tensor) -> FeatcacheError:
        what = "the input of the final layer" if self._read_input else "layer"
        name = f"{what} {self.target!r}" + (" (penultimate)" if self._read_input else "")
        msg = (f"{name} of {type(self.module).__name__} is never run by the forward pass in inference "
               "(eval) mode (e.g. an auxiliary head used only in training), so it has no features")
        try:
            reached = self.reached_layers(images)
        except Exception:  # noqa: BLE001 - the suggestion is a courtesy; the error stands without it
            reached = []
        parent = self.target.rpartition(".")[0]
        siblings = [n for n in reached if n.rpartition(".")[0] == parent]  # run, beside the target
        suggest = siblings[-4:] or [n for n in reached if "." not in n][-4:]
        if suggest:
            msg += f"; pass a layer that is run, e.g. {', '.join(repr(n) for n in suggest)}, or 'penultimate'"
        else:
            msg += "; pass 'penultimate' or another module name from model.named_modules()"
        return FeatcacheError(msg)
