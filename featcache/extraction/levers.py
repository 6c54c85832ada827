"""Inference levers: a faster CPU forward pass, chosen by a fixed rule and recorded with the feature set.

Three levers, all exact up to float rounding (features within ~1e-6 relative of the
plain eager forward; measured for every torchvision backbone in the tables of
:mod:`featcache.extraction.lever_tables`, one per kind of CPU):

* ``channels_last`` - NHWC memory layout for the model and its input (oneDNN's
  preferred layout for convolutions);
* ``freeze`` - ``torch.jit.trace`` + ``torch.jit.freeze`` + ``optimize_for_inference``:
  weights become constants, batch norm folds into convolutions, oneDNN fuses
  convolution + activation. It costs seconds of set-up (tracing, folding, the first
  call's weight packing), so it is only used when the run has enough work to repay it
  (:data:`FREEZE_MIN_WORK` images x input pixels); a feature set keeps the frozen graph, so
  later runs into it load the graph instead of building the model and freezing it again;
* ``onnxruntime`` - the extractor exported to ONNX and run by ONNX Runtime
  (:mod:`featcache.extraction.onnx_forward`), in place of the other two where the table
  measured it faster than the best of them; its export costs more seconds than freezing
  (1.1-32 s), so it needs more work: the table gives each backbone its break-even.

The choice is a deterministic rule over the backbone, the device and its kind of CPU (the
measured table of :mod:`featcache.extraction.lever_tables`), the compute precision and the
amount of work (never a timing taken at run time), and it is made once per
feature set: the first run that computes rows records it in ``compute.json`` beside
``identity.json``; every later run into that set (a resumed, grown, or torchrun job)
reads the record and computes the same way, so all rows of a set come from one
computation, bit for bit. A set that has rows but no record was computed before the
levers existed: plainly, and it stays plain. The levers only change float rounding, so
they are not part of the feature key (``--precision`` is). Details: docs/compute.md.

bfloat16 changes the numbers by far more than rounding, so it stays the explicit
``--precision bfloat16`` (part of the key); :func:`featcache.devices.cpu_bf16_native` tells whether this
CPU runs it natively (AVX512-BF16 or AMX) rather than emulated.
"""
from __future__ import annotations

import io
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from featcache import allocator, devices
from featcache.atomic import atomic_write_text
from featcache.errors import FeatcacheError, UnknownNameError
from featcache.extraction import onnx_forward
from featcache.extraction.lever_tables import TABLES, LeverTable
from featcache.specs import COMPUTE_MODES
from featcache.store import artifacts
from featcache.store.featureset import FeatureSet

RECORD = "compute.json"
RECORD_VERSION = 1

#: Input pixels of one image at 224 px, the unit the rule's thresholds are counted in.
PX_224 = 224 * 224
# Freeze only when images x input pixels reach this: 64 images at 224 px, 784 at 64 px.
# Freezing resnet18 took 1.4 s on an idle 2-core Xeon (2-8 s on a loaded one) and saved ~45 ms
# per 224-px image (eager channels_last 15.7 -> frozen 29.6 img/s), so it repays itself after
# ~30-60 images at 224 px; deeper networks cost more to freeze and save more per image.
FREEZE_MIN_WORK = 64 * PX_224
# ONNX Runtime only when images x input pixels reach the table's break-even for the backbone
# (``LeverTable.wins_onnxruntime``, in images at 224 px, never below FREEZE_MIN_WORK): its
# set-up (importing onnx, the export, the session) took 1.1-11 s on the 2-core EPYC for most
# backbones and 13-32 s for the larger Swins and vit_l_32, against 0-17 s for the best
# torch variant, and what it saves an image ranges from 0 % to 3x, so the break-even ranges
# from 64 images (resnet50, efficientnet_lite0, most mobile networks) to ~1,300 (alexnet 944,
# shufflenet_v2_x0_5 1,328). Below it the torch levers run. Every row was measured with
# featcache's requirements (``ml_dtypes<0.7``: 0.7.0 took 1.2-1.3 s to load inside each export's
# set-up; sessions 16-18).
# Rows of the example batch the graph is traced and warmed up with: the frozen graph is not
# specialised to the batch size (every measured backbone gives the same bits for a 32-row
# batch whether traced with 2 or 16 rows; tests/test_levers.py), and each of those two
# calls runs the model, so a small example makes the set-up cheap: resnet50 at 224 px
# 2.5 s with 16 rows, 0.6 s with 2.
TRACE_ROWS = 2

@dataclass(frozen=True)
class Levers:
    """Which levers a feature set's rows are computed with."""

    channels_last: bool = False
    freeze: bool = False
    onnxruntime: bool = False

    @property
    def names(self) -> list[str]:
        return [k for k, on in asdict(self).items() if on]

    def describe(self) -> str:
        return "+".join(self.names) or "plain"

    @classmethod
    def from_names(cls, names: list[str]) -> "Levers":
        known = set(asdict(cls()))
        bad = [n for n in names if n not in known]
        if bad:
            raise FeatcacheError(f"{RECORD} names unknown levers {bad}; expected some of {sorted(known)}. It was "
                                 "written by a newer featcache: upgrade, or extract into a fresh --cache")
        return cls(**{n: True for n in names})


PLAIN = Levers()


def check_compute(compute: str) -> None:
    if compute not in COMPUTE_MODES:
        raise UnknownNameError("--compute mode", compute, COMPUTE_MODES)


def cpu_kind() -> str:
    """This CPU's kind as the lever tables key it: the vector instruction set torch dispatches
    its CPU kernels on ("AVX512", "AVX2", "DEFAULT", "NEON", ...)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_table() -> LeverTable | None:
    """The measured lever table of this CPU's kind, or None (no table: the CPU runs plainly)."""
    return TABLES.get(cpu_kind())


def choose(backbone: str, device: torch.device, *, compute: str = "auto", precision: str = "float32",
           images: int = 0, pixels: int = PX_224) -> Levers:
    """The rule: which levers a new feature set gets (``pixels``: input pixels per image)."""
    check_compute(compute)
    table = cpu_table() if compute != "plain" and device.type == "cpu" else None
    if table is None or backbone not in table.measured:
        return PLAIN
    float32, work = precision == "float32", images * pixels
    onnx_from = table.wins_onnxruntime.get(backbone)
    if float32 and onnx_from is not None and work >= onnx_from * PX_224 and onnx_forward.available():
        return Levers(onnxruntime=True)
    freeze = float32 and work >= FREEZE_MIN_WORK and backbone not in table.loses_freeze
    loses_cl = table.loses_channels_last_frozen if freeze else table.loses_channels_last
    return Levers(channels_last=backbone not in loses_cl, freeze=freeze)


def warn_if_emulated(device: torch.device, precision: str) -> None:
    """Warn before a forward in bfloat16 on a CPU that emulates it (no AVX512-BF16, no AMX):
    resnet18 at 224 px ran 0.9 img/s against 21.5 in float32 on the 2-core AVX2 EPYC."""
    if device.type == "cpu" and precision == "bfloat16" and not devices.native_bf16(device):
        warnings.warn("--precision bfloat16: this CPU has neither AVX512-BF16 nor AMX, so torch emulates bfloat16, "
                      "about 20x slower than float32; pass --precision float32 (a different feature key) unless "
                      "these rows must match bfloat16 rows computed on another machine", RuntimeWarning, stacklevel=2)


def keeps_freed_memory(device: torch.device, compute: str) -> bool:
    """Whether the forward keeps its freed memory for the next batch (:mod:`featcache.allocator`):
    on the CPU unless ``--compute plain``, where the C library allows it. Speed only: it is not a
    lever of the record (it cannot change a row)."""
    return device.type == "cpu" and compute != "plain" and allocator.available()


def recorded(fs: FeatureSet) -> Levers | None:
    """The levers recorded for this set; PLAIN for a set with rows but no record; None for a new set."""
    path = Path(fs.dir) / RECORD
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return Levers.from_names(list(doc["levers"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FeatcacheError(f"{path} is unreadable ({type(e).__name__}: {e}); expected a JSON object with "
                                 "'levers'. If the set has no rows yet, delete the file; else restore it") from None
    return PLAIN if fs.shards() else None


def settle(fs: FeatureSet, wanted: Levers, compute: str, device: torch.device = torch.device("cpu")) -> Levers:
    """The levers this run uses: the set's record, or ``wanted`` (then recorded) for a new set.

    The levers are the CPU's: a run on another device (a GPU) computes its rows its own way,
    which differs from the CPU's by more than rounding anyway, whatever the set's record says.
    A new set it starts is recorded plain."""
    if device.type != "cpu":
        settle(fs, PLAIN, "auto")
        return PLAIN
    have = recorded(fs)
    if compute == "plain" and have not in (None, PLAIN) and not fs.shards():
        have = None  # recorded by a run that failed before its first row (e.g. an export): nothing to match
    if have is None:  # written before any row (a run that fails first leaves only this file, which ls skips)
        atomic_write_text(Path(fs.dir) / RECORD, json.dumps(
            {"version": RECORD_VERSION, "levers": wanted.names, "torch": torch.__version__, "cpu_kind": cpu_kind()},
            indent=2))
        return wanted
    if compute == "plain" and have != PLAIN:
        raise FeatcacheError(
            f"--compute plain: the feature set {fs.key} was computed with the levers {have.describe()} (see "
            f"{Path(fs.dir) / RECORD}), and all rows of a set are computed the same way; drop --compute plain "
            "to add rows to it, or pass a fresh --cache to compute plainly")
    return have


def prepare(extractor: torch.nn.Module, levers: Levers,
            example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Apply ``levers`` to an extractor on the CPU; ``example``: a batch of the input's shape
    (:data:`TRACE_ROWS` rows: the traced graph runs batches of any size). Returns a module, or
    with ``onnxruntime`` an :class:`~featcache.extraction.onnx_forward.OnnxForward`: both take a
    batch and return its features."""
    extractor = extractor.eval()
    if levers.onnxruntime:
        return onnx_forward.start(onnx_forward.export_graph(extractor, example), example)
    extractor, example = in_layout(extractor, example, levers)
    return optimized(freeze_module(extractor, example), example) if levers.freeze else extractor


def in_layout(extractor: torch.nn.Module, example: torch.Tensor,
              levers: Levers) -> tuple[torch.nn.Module, torch.Tensor]:
    """The extractor and the example in the levers' memory layout."""
    if levers.channels_last:
        return extractor.to(memory_format=torch.channels_last), example.contiguous(memory_format=torch.channels_last)
    return extractor, example


def graph_kind(levers: Levers) -> artifacts.Kind | None:
    """The kind of graph a feature set computed with ``levers`` keeps, or None (an eager module)."""
    return artifacts.ONNX_GRAPH if levers.onnxruntime else artifacts.FROZEN_GRAPH if levers.freeze else None


def freeze_module(extractor: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``extractor`` (in eval mode and its layout) traced on ``example`` and frozen: weights as
    constants, batch norm folded into convolutions."""
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit deprecated
            return torch.jit.freeze(torch.jit.trace(extractor, example, check_trace=False))
    except Exception as e:  # noqa: BLE001 - any tracing failure gets the same advice
        raise FeatcacheError(f"freezing {type(extractor).__name__} for the CPU failed ({type(e).__name__}: "
                             f"{e}); pass --compute plain, and report the backbone") from None


def frozen_bytes(frozen: torch.jit.ScriptModule) -> bytes:
    """The TorchScript file of a frozen module, taken before :func:`optimized` (which changes the
    module in place into oneDNN constants that TorchScript cannot load back)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(frozen, buf)
    return buf.getvalue()


def optimized(frozen: torch.jit.ScriptModule, example: torch.Tensor, *,
              advice: str = "pass --compute plain, and report the backbone") -> torch.jit.ScriptModule:
    """A frozen module optimised for inference (oneDNN fusions; in place) and warmed up on ``example``.
    The module frozen in memory and the same module loaded back from :func:`frozen_bytes` give the
    same bits (tests/test_levers.py), so a run that starts a kept file computes as the first did."""
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.optimize_for_inference(frozen)
            module(example)  # warm-up: the frozen graph packs its weights on the first call
    except Exception as e:  # noqa: BLE001 - any failure gets the same advice
        raise FeatcacheError(f"the frozen graph could not be optimised and run ({type(e).__name__}: "
                             f"{str(e)[:300]}); {advice}") from None
    return module


def start_kept(graph: bytes, levers: Levers, example: torch.Tensor, advice: str
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward of the graph a feature set kept (:func:`graph_kind`), warmed up on ``example``."""
    if levers.onnxruntime:
        return onnx_forward.start(graph, example, advice=advice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            frozen = torch.jit.load(io.BytesIO(graph), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - an unreadable file gets the same advice
        raise FeatcacheError(f"the kept frozen graph could not be loaded ({type(e).__name__}: {str(e)[:300]}); "
                             f"{advice}") from None
    return optimized(frozen, to_input(example, levers), advice=advice)


def prepare_timed(extractor: torch.nn.Module, levers: Levers, example: torch.Tensor):
    """(prepared extractor, set-up seconds): what the levers cost once per process."""
    t0 = time.perf_counter()
    return prepare(extractor, levers, example), time.perf_counter() - t0


def prepare_for_set(build: Callable[[], torch.nn.Module], levers: Levers, example: torch.Tensor,
                    folder: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """The extractor that ``build()`` makes, prepared with ``levers`` for the feature set in
    ``folder``: (its forward, timings). With ``onnxruntime`` or ``freeze`` the graph an earlier run
    kept in the folder (:mod:`featcache.store.artifacts`) is started and the model is not built;
    a graph made now is kept there. Timings: ``build_s`` (building the model), ``levers_s`` (the
    whole set-up of the levers) and with a graph ``export_s`` (the part of it spent making and
    keeping the graph, exporting or freezing: 0.0 when the kept graph was started)."""
    t0 = time.perf_counter()
    kind = graph_kind(levers)
    graph = artifacts.kept(folder, kind) if kind is not None else None
    if graph is not None:
        forward = start_kept(graph, levers, example, f"delete the *{kind.suffix} file in {folder}: the next run "
                             f"{kind.remakes}")
        return forward, {"build_s": 0.0, "levers_s": time.perf_counter() - t0, "export_s": 0.0}
    extractor = build().eval()
    t1 = time.perf_counter()
    if kind is None:
        forward = prepare(extractor, levers, example)
        return forward, {"build_s": t1 - t0, "levers_s": time.perf_counter() - t1}
    if levers.onnxruntime:
        graph = onnx_forward.export_graph(extractor, example)
        artifacts.keep(folder, kind, graph)
        made = time.perf_counter() - t1
        forward = onnx_forward.start(graph, example)
    else:
        extractor, example = in_layout(extractor, example, levers)
        frozen = freeze_module(extractor, example)
        try:
            graph = frozen_bytes(frozen)  # before optimized(), which changes the module
        except Exception as e:  # noqa: BLE001 - a module TorchScript cannot save only costs later runs a freeze
            warnings.warn(f"could not save the frozen graph ({type(e).__name__}: {str(e)[:200]}); the next run into "
                          f"this feature set {kind.remakes}", RuntimeWarning, stacklevel=2)
        else:
            artifacts.keep(folder, kind, graph)
        made = time.perf_counter() - t1
        forward = optimized(frozen, example)
    return forward, {"build_s": t1 - t0, "levers_s": time.perf_counter() - t1, "export_s": made}


def to_input(x: torch.Tensor, levers: Levers) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if levers.channels_last else x


