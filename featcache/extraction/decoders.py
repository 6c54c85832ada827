"""How image files become pixels: the decoder strings that enter the feature key.

A constants-only module (no torch import), so the CLI and the pipeline schema can
offer the choices without paying for the heavy imports.
"""

from featcache.specs import DECODE_MODES  # noqa: F401  (the modes, as the specs declare them)
from featcache.store.keys import DECODER_VERSION

# How JPEG files are decoded (``--decode``): by PIL in the DataLoader workers, by PIL at a
# reduced DCT scale ("draft", no smaller than the resize target), or by torchvision.io on
# the extraction device with tensor resizing. The pixels differ slightly, hence a decoder
# string of each; "device" has one key on CPU and CUDA, as the forward pass has.
DECODERS = {
    "workers": DECODER_VERSION,
    "draft": DECODER_VERSION + "+jpeg-draft-v1",
    "device": DECODER_VERSION + "+jpeg-torchvision-io-v1",
}


def decode_mode(decoder: str) -> str:
    """The ``--decode`` mode of an identity's decoder string (identities older than the modes: workers)."""
    return {v: k for k, v in DECODERS.items()}.get(decoder, "workers")
