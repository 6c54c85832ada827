"""The measured lever tables: which inference levers lose, per CPU kind and backbone (no torch).

Each table is the decision of ``benchmarks/lever_table.py`` on one kind of CPU (every
backbone at 64 px, levers on vs off; see ``docs/compute.md``), kept in the code so that the
rule never times anything at run time. The kind is the vector instruction set torch and
oneDNN dispatch their CPU kernels on (``torch.backends.cpu.get_cpu_capability()``), because
that is what decides which convolution kernels run and so which layout and graph win: on the
2-core AVX2 AMD EPYC, channels_last pays for resnet18 and resnet50 (1.23x and 1.11x at 64
px), on the 2-core AVX-512 Xeon it loses for both (0.94x, 0.95x). A CPU of a kind no table
covers (ARM, POWER, an x86 CPU without AVX2) runs plainly until its table is measured.

``tests/test_levers.py`` checks each table against its committed results file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class LeverTable:
    """The backbones one table run measured, and those where a lever lost (slower, not within
    1e-5 of plain eager, or failing to trace); ``source``: its file under benchmarks/results.

    ``loses_channels_last``: channels_last is slower than plain eager (a run too small to
    freeze); ``loses_freeze``: the faster frozen graph (NCHW or channels_last) is slower than
    the unfrozen choice; ``loses_channels_last_frozen``: frozen, NCHW is the faster. A run that
    freezes so gets the fastest of the four variants measured.

    ``wins_onnxruntime``: the backbones where ONNX Runtime ran faster than the best of those
    four and within 1e-5 of plain eager, each with the fewest images (at 224 px) whose saved
    time repays its larger set-up (its export against the best torch variant's set-up, on the
    same row's numbers), measured by a later run of the same script with the ``onnxruntime``
    variant added (``onnxruntime_source``); empty where it was not measured.
    """

    source: str
    measured: frozenset[str]
    loses_channels_last: frozenset[str]
    loses_freeze: frozenset[str]
    loses_channels_last_frozen: frozenset[str]
    wins_onnxruntime: Mapping[str, int] = field(default_factory=dict)
    onnxruntime_source: str | None = None


#: The backbones a table run covers: every torchvision classification backbone but vit_h_14, and
#: efficientnet_lite0. A table measures them all unless one fails to finish.
TABLE_RUN: frozenset[str] = frozenset({
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "densenet121",
    "densenet161", "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1",
    "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6",
    "efficientnet_b7", "efficientnet_lite0", "efficientnet_v2_l", "efficientnet_v2_m",
    "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mnasnet0_75",
    "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "regnet_x_16gf", "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf",
    "regnet_x_800mf", "regnet_x_8gf", "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf",
    "regnet_y_32gf", "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf", "resnet101",
    "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d", "resnext101_64x4d",
    "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "swin_b", "swin_s", "swin_t", "swin_v2_b",
    "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
    "vgg19_bn", "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "wide_resnet101_2", "wide_resnet50_2"})

#: The AVX-512 table: a 2-core Intel Xeon with AMX, the whole table run (docs/compute.md).
AVX512 = LeverTable(
    source="levers_all.json",
    measured=TABLE_RUN,
    loses_channels_last=frozenset({
        "alexnet", "convnext_tiny", "efficientnet_b5", "efficientnet_v2_l", "regnet_x_16gf",
        "regnet_x_8gf", "regnet_y_16gf", "regnet_y_400mf", "regnet_y_800mf", "resnet152", "resnet18",
        "resnet50", "resnext101_32x8d", "swin_b", "vgg11_bn", "vit_b_16", "wide_resnet50_2"}),
    loses_freeze=frozenset({
        "alexnet", "convnext_base", "convnext_small", "convnext_tiny", "densenet161", "efficientnet_b0",
        "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b5", "efficientnet_lite0",
        "googlenet", "inception_v3", "squeezenet1_0", "squeezenet1_1", "vgg11", "vgg11_bn", "vgg13",
        "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"}),
    loses_channels_last_frozen=frozenset({
        "efficientnet_b4", "efficientnet_b7", "efficientnet_v2_l", "efficientnet_v2_s", "maxvit_t",
        "mnasnet0_5", "mnasnet0_75", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_800mf",
        "regnet_x_8gf", "regnet_y_128gf", "regnet_y_3_2gf", "regnet_y_400mf", "resnet18", "resnet50",
        "resnext101_64x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "swin_v2_t",
        "vit_b_32", "vit_l_16"}),
)

#: The AVX2 table: a 2-core AMD EPYC (AVX2, no AVX-512); the backbones it lacks run plainly there.
AVX2 = LeverTable(
    source="levers_avx2.json",
    measured=TABLE_RUN - {"vit_l_16"},  # ran past the run's 300 s time-out here
    loses_channels_last=frozenset({
        "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "efficientnet_b1",
        "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_128gf", "regnet_y_800mf", "resnext101_32x8d",
        "resnext101_64x4d", "resnext50_32x4d", "swin_b", "wide_resnet101_2"}),
    loses_freeze=frozenset({
        "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "densenet121",
        "densenet161", "efficientnet_b0", "efficientnet_b2", "efficientnet_b6", "googlenet",
        "regnet_x_32gf", "regnet_y_16gf", "resnet101", "resnet152", "resnet34", "squeezenet1_0",
        "squeezenet1_1", "swin_b", "swin_v2_b", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16",
        "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_32"}),
    loses_channels_last_frozen=frozenset({
        "densenet169", "efficientnet_b1", "efficientnet_b3", "efficientnet_b5", "efficientnet_b7",
        "efficientnet_lite0", "efficientnet_v2_l", "inception_v3", "mobilenet_v2", "mobilenet_v3_large",
        "regnet_x_800mf", "regnet_x_8gf", "regnet_y_1_6gf", "regnet_y_400mf", "regnet_y_800mf", "resnet18",
        "resnet50", "resnext101_32x8d", "resnext101_64x4d", "shufflenet_v2_x1_0", "shufflenet_v2_x2_0",
        "swin_t", "swin_v2_t", "vit_b_16", "wide_resnet101_2", "wide_resnet50_2"}),
    # each backbone at its own size (224 px for most), 74 of the 79: ONNX Runtime beat the best of
    # the four torch variants on all but vit_b_16, vit_b_32 and convnext_large; value: the fewest
    # 224-px images that repay its set-up
    wins_onnxruntime={
        "alexnet": 944, "convnext_base": 64, "convnext_small": 288, "convnext_tiny": 144,
        "densenet121": 96, "densenet161": 64, "densenet169": 112, "densenet201": 256,
        "efficientnet_b0": 80, "efficientnet_b1": 112, "efficientnet_b2": 96, "efficientnet_b3": 64,
        "efficientnet_b4": 64, "efficientnet_b5": 64, "efficientnet_lite0": 64,
        "efficientnet_v2_s": 80, "googlenet": 64, "inception_v3": 144, "maxvit_t": 144,
        "mnasnet0_5": 64, "mnasnet0_75": 64, "mnasnet1_0": 64, "mnasnet1_3": 64, "mobilenet_v2": 64,
        "mobilenet_v3_large": 64, "mobilenet_v3_small": 64, "regnet_x_16gf": 64,
        "regnet_x_1_6gf": 64, "regnet_x_32gf": 64, "regnet_x_3_2gf": 64, "regnet_x_400mf": 64,
        "regnet_x_800mf": 64, "regnet_x_8gf": 64, "regnet_y_16gf": 64, "regnet_y_1_6gf": 64,
        "regnet_y_32gf": 128, "regnet_y_3_2gf": 64, "regnet_y_400mf": 64, "regnet_y_800mf": 64,
        "regnet_y_8gf": 64, "resnet101": 64, "resnet152": 112, "resnet18": 64, "resnet34": 176,
        "resnet50": 64, "resnext101_32x8d": 176, "resnext101_64x4d": 64, "resnext50_32x4d": 64,
        "shufflenet_v2_x0_5": 1328, "shufflenet_v2_x1_0": 304, "shufflenet_v2_x1_5": 240,
        "shufflenet_v2_x2_0": 816, "squeezenet1_0": 64, "squeezenet1_1": 64, "swin_b": 304,
        "swin_s": 384, "swin_t": 320, "swin_v2_b": 192, "swin_v2_s": 688, "swin_v2_t": 320,
        "vgg11": 304, "vgg11_bn": 176, "vgg13": 176, "vgg13_bn": 144, "vgg16": 256, "vgg16_bn": 256,
        "vgg19": 304, "vgg19_bn": 144, "vit_l_32": 352, "wide_resnet101_2": 80,
        "wide_resnet50_2": 144},
    onnxruntime_source="levers_avx2_onnxruntime.json",
)

#: CPU kind (``torch.backends.cpu.get_cpu_capability()``) -> its table.
TABLES: dict[str, LeverTable] = {"AVX512": AVX512, "AVX2": AVX2}
