"""Treat subnormal float32 values (below 2**-126, about 1.2e-38) as zero on the CPU.

The decoder's softmax probabilities of confident attention and GELU outputs of very
negative inputs underflow into the subnormal range, and an x86 core takes a microcode
assist of ~100 cycles for every multiply with a subnormal operand, inside the GEMMs
too. Flush-to-zero and denormals-are-zero (the MXCSR FTZ/DAZ bits) remove that cost
and change a result by less than 2**-126 in absolute value, far below any tolerance
here; TensorFlow sets the same bits in its CPU threads.

The bits belong to a thread, and an OpenMP worker thread copies them from the thread
that creates it, when that thread first runs a parallel region. So every compute entry
point of sam_core sets them on its calling thread before its first tensor op: the
OpenMP team of a thread whose first parallel work is ours then inherits them.
"""

from __future__ import annotations

import torch


def flush_denormals() -> bool:
    """Set FTZ/DAZ on the calling thread; False where the CPU has no such mode."""
    return torch.set_flush_denormal(True)
