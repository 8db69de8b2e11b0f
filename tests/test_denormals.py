"""sam_core's entry points flush subnormal floats to zero on their calling thread."""

import subprocess
import sys
import textwrap

# Each entry point runs in a fresh thread (its FP mode is the process default) that
# first checks that a subnormal survives a multiply, then calls the entry point and
# checks that the same multiply now gives 0 (denormals-are-zero).
SCRIPT = textwrap.dedent(
    """
    import threading
    import numpy as np
    import torch
    from sam_core import AutomaticMaskGenerator, SamPredictor, build_sam

    torch.set_num_threads(1)
    SUBNORMAL = torch.tensor([1e-39])

    def flushed():
        return (SUBNORMAL * 1.0).item() == 0.0

    checkpoint = sys.argv[1]
    model = None
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)

    def build():
        global model
        model = build_sam(checkpoint=checkpoint)

    def encode():
        SamPredictor(model).encode([image])

    def decode():
        predictor = SamPredictor(model)
        embedding = predictor.encode([image])[0]
        torch.set_flush_denormal(False)  # only iter_decode's own setting counts below
        list(predictor.iter_decode(embedding, np.array([[[10.0, 10.0]]]), np.array([[1]])))

    def generate():
        AutomaticMaskGenerator(model, points_per_side=2).generate(image)

    for name, entry in [("build", build), ("encode", encode), ("decode", decode),
                        ("generate", generate)]:
        result = {}
        def body():
            result["before"] = flushed()
            entry()
            result["after"] = flushed()
        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        print(name, result["before"], result["after"])
    print("main", flushed())
    """
)


def test_entry_points_flush_denormals_on_their_thread(tiny_checkpoint):
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + SCRIPT, str(tiny_checkpoint)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    lines = dict(line.split(" ", 1) for line in out if line)
    for name in ("build", "encode", "decode", "generate"):
        assert lines[name] == "False True", (name, lines)
    # Other threads keep their own mode.
    assert lines["main"] == "False"
