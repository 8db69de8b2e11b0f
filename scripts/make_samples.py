"""Write the bundled synthetic sample scenes into pipeline/samples/.

  python scripts/make_samples.py

The photos beside them were copied once from scikit-image's data folder (see
pipeline/samples/README.md); the scenes are made here from held-out seeds that
training never uses.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from training.scenes import make_scene

SAMPLES = Path(__file__).resolve().parent.parent / "pipeline" / "samples"
SEEDS = [2_000_000 + i for i in range(4)]


def main() -> None:
    SAMPLES.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS):
        image, masks = make_scene(seed, size=(384, 512))
        path = SAMPLES / f"scene_{i}.png"
        Image.fromarray(image).save(path, optimize=True)
        print(f"{path.name}: seed {seed}, {len(masks)} objects")


if __name__ == "__main__":
    main()
