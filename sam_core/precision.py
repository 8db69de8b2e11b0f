"""Which precision to run in: bf16 only where the hardware makes it fast.

bf16 pays off on CUDA devices with bf16 support and on CPUs with AMX or AVX512-BF16.
Elsewhere it is a trap: on an AVX2-only CPU torch emulates bf16 matrix products, which
then run at well under 1 GFLOP/s against about 100 in fp32, so "auto" picks fp32 there.
"""

from __future__ import annotations

import functools

import torch

PRECISIONS = ("fp32", "bf16")
CHOICES = ("auto", *PRECISIONS)
# /proc/cpuinfo flags of CPUs with bf16 matrix hardware.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether bf16 is fast on `device`, the reason in words)."""
    if device.type == "cuda":
        # bf16 tensor cores came with Ampere (sm80); torch.cuda.is_bf16_supported() also
        # says yes where bf16 is only emulated (T4, sm75).
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8:
            return True, f"CUDA device {name} (sm{major}{minor}) has bf16 tensor cores"
        return False, f"CUDA device {name} (sm{major}{minor}) has no bf16 tensor cores"
    if device.type == "cpu":
        found = sorted(BF16_CPU_FLAGS & cpu_flags())
        capability = torch.backends.cpu.get_cpu_capability()
        if found:
            return True, f"the CPU has {', '.join(found)} (torch capability {capability})"
        return False, (
            f"the CPU has neither AMX-BF16 nor AVX512-BF16 (torch capability {capability}): "
            f"bf16 matrix products are emulated there (measured on an AVX2 AMD EPYC: under "
            f"1 GFLOP/s against about 100 in fp32; the generator ran 8-17x slower than fp32)"
        )
    return False, f"no bf16 fast path known for device type {device.type!r}"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision to run in, fp32 or bf16, for `precision` (auto, fp32, bf16)."""
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {CHOICES}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16(device)[0] else "fp32"
