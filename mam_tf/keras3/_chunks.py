"""How many input columns one forward chunk of the JAX and PyTorch MAM op takes."""
import os

#: Products one chunk may hold (B * c * M): 2**22 float32 products = 16 MiB per chunk. The
#: same knob (``MAM_TF_CHUNK_PRODUCTS``) as the TensorFlow reference path.
CHUNK_PRODUCTS = int(os.environ.get("MAM_TF_CHUNK_PRODUCTS", 2**22))


def chunk_columns(batch, n, m):
    """Input columns per chunk, at least 1 and at most ``n``."""
    b = batch if isinstance(batch, int) and batch > 0 else 128
    return int(max(1, min(n, CHUNK_PRODUCTS // max(1, b * m))))
