"""How image files become pixels: the decoder strings that enter the feature key.

A constants-only module (no torch import), so the CLI and the pipeline schema can
offer the choices without paying for the heavy imports.
"""

# Bumped whenever image decoding (mode conversion, alpha compositing) changes.
DECODER_VERSION = "rgb-on-white-v1"

# How JPEG files are decoded (``--decode``): by PIL in the DataLoader workers, by PIL at a
# reduced DCT scale ("draft", no smaller than the resize target), or by torchvision.io on
# the extraction device with tensor resizing. The pixels differ slightly, hence a decoder
# string of each; "device" has one key on CPU and CUDA, as the forward pass has.
DECODERS = {
    "workers": DECODER_VERSION,
    "draft": DECODER_VERSION + "+jpeg-draft-v1",
    "device": DECODER_VERSION + "+jpeg-torchvision-io-v1",
}
DECODE_MODES = tuple(DECODERS)
