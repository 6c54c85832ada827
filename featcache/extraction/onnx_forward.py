"""The ``onnxruntime`` lever: the feature extractor exported to ONNX and run by ONNX Runtime.

ONNX Runtime's CPU kernels (MLAS) run the convolutions of many backbones much faster than
torch's eager or frozen oneDNN graphs on the same cores: on a 2-core AVX2 AMD EPYC at 224 px,
batch 32, resnet18 ran 37-41 img/s against 25-28 frozen and 18 eager, efficientnet_b0 65
against 16-17 (benchmarks/README.md, "ONNX Runtime"). The export traces the extractor once
(``torch.onnx.export``'s TorchScript exporter, with a free batch dimension). A feature set
keeps its graph in its folder (:func:`featcache.store.artifacts.keep`): every later run
into the set starts its session from that file without building or exporting the model, so
all of the set's rows come from one graph, bit for bit.

A row's features do not depend on the rows batched with it, on the batch size or on the
session's thread count (tests/test_levers.py), and stay within ~1e-6 relative of the eager
forward, so resumed, grown and torchrun jobs give the same rows as an uninterrupted run.
Which backbones use it is the lever table's decision (:mod:`featcache.extraction.levers`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings

import numpy as np
import torch

from featcache.errors import FeatcacheError

#: The ONNX opset of the export: one that both the exporter of torch 2.14 and ONNX Runtime 1.2x cover.
OPSET = 17
INPUT, OUTPUT = "images", "features"


def available() -> bool:
    """Whether the lever can run here: ``onnx`` (the exporter's dependency) and ``onnxruntime``
    are installed. Looked up without importing either."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


class OnnxForward:
    """The extractor's contract over an ONNX Runtime session: a float32 NCHW batch (a torch
    tensor on the CPU) in, its features (a torch tensor) out."""

    def __init__(self, session):
        self.session = session

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: images})[0])


@contextlib.contextmanager
def attention_as_operators():
    """``nn.MultiheadAttention`` without its inference fast path while tracing: the fast path is
    one fused operator (``aten::_native_multi_head_attention``) that has no ONNX form, so every
    ViT failed to export; its plain form is the same attention in matrix products and softmax
    (vit_b_32 at 224 px: within 1.6e-6 of the eager forward). Restored afterwards."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def export_graph(extractor: torch.nn.Module, example: torch.Tensor) -> bytes:
    """``extractor`` (in eval mode, on the CPU) exported as an ONNX graph with ``example``'s shape
    but any batch size."""
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), attention_as_operators():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(extractor, (example,), buf, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    except Exception as e:  # noqa: BLE001 - any export failure gets the same advice
        raise FeatcacheError(f"exporting {type(extractor).__name__} to ONNX Runtime failed ({type(e).__name__}: "
                             f"{str(e)[:300]}); pass --compute plain, and report the backbone") from None
    return buf.getvalue()


def start(graph: bytes, example: torch.Tensor, *, advice: str = "pass --compute plain, and report the backbone"
          ) -> OnnxForward:
    """An ONNX Runtime session over ``graph`` with torch's thread count, warmed up on ``example``."""
    try:
        import onnxruntime
    except ImportError:
        raise FeatcacheError("the feature set's levers name onnxruntime, which is not installed here; install "
                             "featcache's dependencies (pip install onnx onnxruntime), or extract into a fresh "
                             "--cache") from None
    try:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        forward = OnnxForward(onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"]))
        forward(example)  # warm-up: the session plans its memory on the first run
    except Exception as e:  # noqa: BLE001 - any session failure gets the same advice
        raise FeatcacheError(f"ONNX Runtime could not run the exported graph ({type(e).__name__}: "
                             f"{str(e)[:300]}); {advice}") from None
    return forward
