"""Encoder time per image and decoder time per 1024 prompts: ours vs the reference.

Same seeded vit_b state dict for both, same image and prompts, one process, so the
ratios are taken under the same machine load. The reference (`segment-anything`
1.0) runs when it is importable (see README, "Parity with the reference"); else
only our figures are printed. GEMM throughput is measured first so the fraction
of peak is visible; it is measured again at the end and the higher figure is the one
divided by, since the machine's load drifts during a run.

  python benchmarks/encoder_decoder.py [--model vit_b] [--prompts 256] [--threads 2] [--bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from sam_core import CONFIGS, SamPredictor, build_sam
from sam_core.allocator import keep_freed_memory
from sam_core.precision import fast_bf16


def best_of(fn, repeat: int) -> float:
    """Minimum wall time of `repeat` calls (s): the least disturbed run."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    return 2 * n**3 / best_of(lambda: torch.mm(a, b), 5) / 1e9


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# torch's FLOP counter has no formula for the CPU kernel of scaled_dot_product_attention
# and would count the encoder's and decoder's attention products as 0 FLOPs.
_CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_flops(fn) -> float:
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Ours:
    name = "ours"

    def __init__(self, checkpoint: str, precision: str) -> None:
        self.predictor = SamPredictor(build_sam(checkpoint=checkpoint), precision)

    def encode(self, image: np.ndarray):
        return self.predictor.encode([image])[0]

    def decode(self, embedding, coords: np.ndarray, labels: np.ndarray, batch: int) -> None:
        for _ in self.predictor.iter_decode(embedding, coords, labels, batch_size=batch):
            pass


class Reference:
    name = "reference"

    def __init__(self, checkpoint: str, precision: str) -> None:
        from segment_anything import SamPredictor as RefPredictor
        from segment_anything import sam_model_registry

        self.predictor = RefPredictor(sam_model_registry["vit_b"](checkpoint=checkpoint).eval())
        self.precision = precision

    @torch.no_grad()
    def encode(self, image: np.ndarray):
        with autocast(self.precision):
            self.predictor.set_image(image)
        return self.predictor

    @torch.no_grad()
    def decode(self, predictor, coords: np.ndarray, labels: np.ndarray, batch: int) -> None:
        # The decoder part of predict_torch (no upsampling), as the AMG calls it.
        model = predictor.model
        points = predictor.transform.apply_coords(coords, predictor.original_size)
        with autocast(self.precision):
            for start in range(0, len(points), batch):
                pts = torch.as_tensor(points[start : start + batch], dtype=torch.float)
                lbl = torch.as_tensor(labels[start : start + batch], dtype=torch.int)
                sparse, dense = model.prompt_encoder((pts, lbl), None, None)
                model.mask_decoder(
                    image_embeddings=predictor.features,
                    image_pe=model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", choices=list(CONFIGS))
    parser.add_argument("--prompts", type=int, default=256, help="timed; scaled to 1024")
    parser.add_argument("--batch", type=int, default=64, help="prompts per decoder call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 rows even on a slow-bf16 CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # what a pipeline worker sets (transforms/inference.py)

    capability = torch.backends.cpu.get_cpu_capability()
    print(
        f"torch {torch.__version__}, cpu capability {capability}, {args.threads} threads, "
        f"model {args.model}"
    )
    bf16_fast, why = fast_bf16(torch.device("cpu"))
    precisions = ("fp32", "bf16") if bf16_fast or args.bf16 else ("fp32",)
    peak = {p: gemm_gflops(torch.float32 if p == "fp32" else torch.bfloat16) for p in precisions}
    print("GEMM 2048^3: " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peak.items()))
    if "bf16" not in precisions:
        print(f"bf16 rows skipped ({why}); --bf16 runs them anyway")

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    coords = rng.uniform(0, [1024, 768], (args.prompts, 1, 2))
    labels = np.ones((args.prompts, 1), dtype=np.int64)

    try:
        import segment_anything  # noqa: F401

        impls = [Ours, Reference]
    except ImportError:
        impls = [Ours]
        print("segment-anything not installed: reference columns skipped")

    with tempfile.NamedTemporaryFile(suffix=".pth") as ckpt:
        torch.save(build_sam(args.model).state_dict(), ckpt.name)
        ours = Ours(ckpt.name, "fp32")
        emb = ours.encode(image)
        enc_flops = count_flops(lambda: ours.encode(image))
        dec_flops = count_flops(lambda: ours.decode(emb, coords[:64], labels[:64], 64)) / 64
        print(
            f"FLOPs (ours, counted): encoder {enc_flops / 1e12:.3f} TFLOP/image, "
            f"decoder {dec_flops / 1e9:.2f} GFLOP/prompt"
        )
        rows = []
        for precision in precisions:
            for impl in impls:
                runner = impl(ckpt.name, precision)
                runner.encode(image)  # warm-up
                enc = best_of(lambda r=runner: r.encode(image), args.repeat)
                state = runner.encode(image)
                runner.decode(state, coords[: args.batch], labels[: args.batch], args.batch)
                dec = best_of(
                    lambda r=runner, s=state: r.decode(s, coords, labels, args.batch), args.repeat
                )
                rows.append((precision, impl.name, enc, dec * 1024 / args.prompts))

    for precision in precisions:
        again = gemm_gflops(torch.float32 if precision == "fp32" else torch.bfloat16)
        print(f"GEMM 2048^3 at the end: {precision} {again:.0f} GFLOP/s")
        peak[precision] = max(peak[precision], again)

    print()
    print(
        f"{'precision':9s} {'impl':9s} {'encoder s/img':>13s} {'decoder s/1024':>14s} "
        f"{'enc GFLOP/s':>11s} {'%peak':>6s} {'dec GFLOP/s':>11s} {'%peak':>6s}"
    )
    for precision, name, enc, dec in rows:
        enc_rate = enc_flops / enc / 1e9
        dec_rate = dec_flops * 1024 / dec / 1e9
        print(
            f"{precision:9s} {name:9s} {enc:13.2f} {dec:14.2f} {enc_rate:11.0f} "
            f"{100 * enc_rate / peak[precision]:5.0f}% {dec_rate:11.0f} "
            f"{100 * dec_rate / peak[precision]:5.0f}%"
        )
    if len(impls) == 2:
        print()
        by = {(p, n): (e, d) for p, n, e, d in rows}
        for precision in precisions:
            (oe, od), (re_, rd) = by[(precision, "ours")], by[(precision, "reference")]
            print(
                f"{precision}: encoder {re_ / oe:.2f}x, decoder {rd / od:.2f}x"
                " faster than reference"
            )
        print("(decoder GFLOP/s counts the FLOPs ours executes; the reference does more)")


if __name__ == "__main__":
    main()
