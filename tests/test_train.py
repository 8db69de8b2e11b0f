"""Training recipe pieces: losses, prompt sampling, a few steps, checkpoint format,
and the committed synthetic checkpoint against random weights."""

import dataclasses
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import sam_core.precision
from sam_core import SamConfig, build_sam, config_from_state_dict, save_state_dict
from sam_core.preprocess import normalize_and_pad
from sam_core.sam import Sam
from training import train as train_module
from training.evaluate import best_ious, evaluate_points, held_out_scenes, innermost_point
from training.train import (
    ThreadTuner,
    TrainConfig,
    choose_precision,
    corrective_points,
    dice_loss,
    focal_loss,
    image_signal,
    load_training_state,
    main,
    mask_iou,
    mask_loss,
    new_model,
    noisy_box,
    sample_batch,
    save_training_state,
    select_best,
    state_path,
    train,
    train_step,
)

WEIGHTS = Path(__file__).parent.parent / "sam_core" / "weights" / "sam_synthetic.pth"

TINY = SamConfig(
    image_size=64,
    patch_size=8,
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    window_size=4,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_num_heads=8,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)
TINY_TRAIN = TrainConfig(
    batch_images=2,
    prompts_per_image=4,
    rounds=2,
    loss_size=32,
    precision="fp32",
    lr=3e-3,
    threads=1,
    warmup_steps=2,
    log_every=2,
    total_steps=8,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models gain nothing from a second thread, and on a shared 2-core machine
    # two threads stall on each other whenever another process holds a core.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_focal_loss_matches_hand_computed_values():
    logits = torch.tensor([[[0.0, 0.0]]])
    targets = torch.tensor([[[1.0, 0.0]]])
    # p = 0.5 everywhere: ce = ln 2, (1 - p_t)^2 = 1/4, alpha_t = 0.25 (fg) / 0.75 (bg).
    expected = (0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)) / 2
    torch.testing.assert_close(focal_loss(logits, targets), torch.tensor([expected]))
    confident = focal_loss(torch.tensor([[[5.0, -5.0]]]), targets)
    assert confident.item() < 1e-5


def test_dice_loss_matches_hand_computed_values():
    targets = torch.tensor([[1.0, 0.0]])
    # p = 0.5: intersection 0.5, sum p + sum t = 2; 1 - (2 * 0.5 + 1) / (2 + 1) = 1/3.
    torch.testing.assert_close(
        dice_loss(torch.zeros(1, 1, 2), targets[None]), torch.tensor([1 / 3])
    )
    assert dice_loss(torch.tensor([[[20.0, -20.0]]]), targets[None]).item() < 1e-6


def test_mask_loss_is_20_focal_plus_dice():
    logits, targets = torch.randn(3, 8, 8), (torch.rand(3, 8, 8) > 0.5).float()
    expected = 20 * focal_loss(logits, targets) + dice_loss(logits, targets)
    torch.testing.assert_close(mask_loss(logits, targets), expected)


def test_best_of_three_selects_the_lowest_loss_output():
    losses = torch.tensor([[3.0, 1.0, 2.0], [0.5, 0.7, 0.1], [0.2, 0.9, 0.4]])
    assert select_best(losses).tolist() == [1, 2, 0]


def test_mask_iou():
    masks = torch.tensor([[[True, True, False, False]]])
    targets = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]])
    torch.testing.assert_close(mask_iou(masks, targets), torch.tensor([1 / 3]))
    torch.testing.assert_close(mask_iou(masks & False, targets * 0), torch.tensor([0.0]))


def test_corrective_points_come_from_the_error_region():
    targets = torch.zeros(3, 8, 8)
    targets[:, 2:6, 2:6] = 1
    predictions = targets.bool().clone()
    predictions[0, 2:6, 2:6] = False  # prompt 0: all missed -> a fg point inside
    predictions[1, 0, :] = True  # prompt 1: a false positive row -> a bg point there
    xy, labels = corrective_points(predictions, targets, torch.Generator().manual_seed(0))
    assert xy.shape == (3, 1, 2) and labels.tolist() == [[1], [0], [-1]]
    x, y = xy[0, 0].long().tolist()
    assert 2 <= x < 6 and 2 <= y < 6
    assert xy[1, 0, 1].item() == 0


def test_noisy_box_stays_in_the_image():
    mask = np.zeros((32, 48), dtype=bool)
    mask[0:10, 40:48] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        x0, y0, x1, y1 = noisy_box(rng, mask)
        assert 0 <= x0 <= 47 and 0 <= x1 <= 47 and 0 <= y0 <= 31 and 0 <= y1 <= 31


def test_batches_are_seeded_and_prompts_are_well_formed():
    cfg = dataclasses.replace(TINY_TRAIN, loss_size=64)  # targets at full resolution
    a = sample_batch(np.random.default_rng(5), cfg, 64)
    b = sample_batch(np.random.default_rng(5), cfg, 64)
    torch.testing.assert_close(a.images, b.images)
    assert sum(len(g.image_index) for g in a.groups) == 8
    for ga, gb in zip(a.groups, b.groups):
        torch.testing.assert_close(ga.coords, gb.coords)
        for coords, labels, target in zip(ga.coords, ga.labels, ga.targets):
            for (x, y), label in zip(coords.long().tolist(), labels.tolist()):
                if label == 1:
                    assert target[y, x] == 1


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = new_model(TINY, seed=0)
    batch = sample_batch(np.random.default_rng(0), TINY_TRAIN, TINY.image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, _ = train_step(model, batch, TINY_TRAIN, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_encoder_under_autograd_equals_the_inference_path():
    # Training attends with the relative-position bias written out; inference uses
    # SDPA with the bias as a mask. Both windowed and global blocks must agree.
    model = new_model(TINY, seed=0)
    with torch.no_grad():
        for name, param in model.image_encoder.named_parameters():
            if "rel_pos" in name:
                param.normal_(0.0, 0.5)  # zero-initialised: make the bias matter
    images = torch.randn(2, 3, TINY.image_size, TINY.image_size)
    trained = model.image_encoder(images)
    with torch.no_grad():
        inferred = model.image_encoder(images)
    torch.testing.assert_close(trained, inferred, rtol=1e-4, atol=1e-5)
    trained.square().sum().backward()
    for block in model.image_encoder.blocks:
        assert block.attn.rel_pos_h.grad.abs().sum() > 0
        assert block.attn.rel_pos_w.grad.abs().sum() > 0


def test_decoder_under_autograd_equals_the_inference_path():
    # Training upscales 16 prompts at a time, inference one: more prompts than one
    # chunk must come back whole and in order.
    model = new_model(TINY, seed=0)
    dim, side = TINY.prompt_embed_dim, TINY.image_size // TINY.patch_size
    embeddings = torch.randn(1, dim, side, side, requires_grad=True)
    sparse = torch.randn(20, 2, dim)
    dense = torch.randn(1, dim, side, side)
    args = (model.prompt_encoder.dense_pe(), sparse, dense, True)
    trained, trained_iou = model.mask_decoder(embeddings, *args)
    with torch.no_grad():
        inferred, inferred_iou = model.mask_decoder(embeddings, *args)
    assert trained.shape == (20, 3, 4 * side, 4 * side)
    torch.testing.assert_close(trained, inferred, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trained_iou, inferred_iou, rtol=1e-4, atol=1e-5)
    trained.square().sum().backward()
    assert embeddings.grad.abs().sum() > 0


def test_trained_checkpoint_has_official_keys_and_loads(tmp_path):
    model = train(TINY, TINY_TRAIN, max_steps=2, log=lambda _: None).model
    path = tmp_path / "tiny.pth"
    sha256 = save_state_dict(model, path)
    state_dict = torch.load(path, weights_only=True)
    assert list(state_dict) == list(Sam(TINY).state_dict())
    assert config_from_state_dict(state_dict) == TINY
    loaded = build_sam(checkpoint=path)
    assert loaded.checkpoint_sha256 == sha256
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_image_signal_separates_image_dependent_from_collapsed_embeddings():
    torch.manual_seed(0)
    assert image_signal(torch.randn(4, 8, 5, 5)) > 0.8
    # A collapsed encoder: one map for every image plus small image-dependent noise.
    collapsed = torch.randn(1, 8, 5, 5).expand(4, -1, -1, -1) + 0.01 * torch.randn(4, 8, 5, 5)
    assert image_signal(collapsed) < 0.05
    # A fresh encoder's output does depend on the image.
    model = new_model(TINY, seed=0)
    batch = sample_batch(np.random.default_rng(0), TINY_TRAIN, TINY.image_size)
    with torch.no_grad():
        assert image_signal(model.image_encoder(batch.images)) > 0.5


def test_evaluation_helpers():
    gt = np.zeros((2, 4, 4), dtype=bool)
    gt[0, :2] = True
    gt[1, 2:, :2] = True
    pred = gt[:1].copy()
    np.testing.assert_allclose(best_ious(gt, pred), [1.0, 0.0])
    mask = np.zeros((9, 9), dtype=bool)
    mask[1:8, 1:8] = True
    assert innermost_point(mask) == (4, 4)


def test_committed_checkpoint_beats_random_weights():
    # Single-point prompts at each object's innermost pixel, held-out scenes. With
    # the default AMG thresholds (predicted IoU > 0.88, stability >= 0.95) neither
    # model yields any mask yet (training/README.md), so AMG cannot rank them.
    trained = build_sam(checkpoint=WEIGHTS)
    torch.manual_seed(0)
    random = build_sam(trained.config)
    scenes = held_out_scenes(4, (trained.image_size, trained.image_size))
    trained_miou = evaluate_points(trained, scenes)["point_miou_top1"]
    random_miou = evaluate_points(random, scenes)["point_miou_top1"]
    assert random_miou < 0.08, random_miou
    assert trained_miou > 0.15, trained_miou
    assert trained_miou > 4 * random_miou


def test_committed_encoder_output_depends_on_the_image():
    # The first committed model (lr 2e-3) had collapsed: its embeddings were one
    # image-independent map (image signal 0.03), so its masks ignored the image.
    model = build_sam(checkpoint=WEIGHTS)
    scenes = held_out_scenes(4, (model.image_size, model.image_size))
    images = [torch.from_numpy(s.image).permute(2, 0, 1) for s in scenes]
    with torch.no_grad():
        embeddings = model.image_encoder(normalize_and_pad(images, model.image_size))
    assert image_signal(embeddings) > 0.3  # committed model (lr 7e-4, patch 8): 0.54


# ---------------------------------------------------------------- precision, resume, device


def _fake_cpu_flags(monkeypatch, flags: set[str]) -> None:
    # fast_bf16 looks cpu_flags up at call time: faking it fakes the CPU.
    monkeypatch.setattr(sam_core.precision, "cpu_flags", lambda: frozenset(flags))


def test_precision_follows_the_cpus_bf16_capability(monkeypatch):
    cpu = torch.device("cpu")
    _fake_cpu_flags(monkeypatch, {"avx2", "fma"})
    assert choose_precision("auto", cpu)[0] == "fp32"
    with pytest.warns(UserWarning, match="training will be slow"):
        assert choose_precision("bf16", cpu)[0] == "bf16"
    _fake_cpu_flags(monkeypatch, {"avx2", "amx_bf16"})
    assert choose_precision("auto", cpu)[0] == "bf16"
    assert choose_precision("fp32", cpu)[0] == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("fp16", cpu)


@pytest.mark.parametrize(("flags", "expected"), [({"avx2"}, "fp32"), ({"avx512_bf16"}, "bf16")])
def test_training_runs_in_the_precision_the_cpu_makes_fast(monkeypatch, flags, expected):
    _fake_cpu_flags(monkeypatch, flags)
    lines: list[str] = []
    cfg = dataclasses.replace(TINY_TRAIN, precision="auto")
    result = train(TINY, cfg, max_steps=1, log=lines.append)
    assert lines[0].startswith(f"precision {expected} (auto: ")
    assert result.state["runs"][0]["precision"] == expected
    # bf16 autocast is really used there: the encoder output is bfloat16 under it.
    batch = sample_batch(np.random.default_rng(0), cfg, TINY.image_size)
    with train_module._autocast(expected, torch.device("cpu")):
        out = result.model.image_encoder(batch.images)
    assert out.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


def _same_params(a: Sam, b: Sam) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_resume_continues_exactly_as_one_uninterrupted_run(tmp_path):
    # 8 steps straight against 3 + 5 resumed through a state file (fp32, fixed seeds,
    # a step-based schedule): the same weights bit for bit, the same log, LR and RNG.
    straight = train(TINY, TINY_TRAIN, log=lambda _: None)
    first = train(TINY, TINY_TRAIN, max_steps=3, log=lambda _: None)
    assert first.stopped == "max_steps" and first.state["step"] == 3
    path = tmp_path / "part.pth.state.pt"
    save_training_state(first.state, path)
    resumed_state = load_training_state(path)
    lines: list[str] = []
    second = train(TINY, TINY_TRAIN, log=lines.append, resume=resumed_state)
    assert second.stopped == "budget" and second.state["step"] == straight.state["step"] == 8
    _same_params(second.model, straight.model)
    assert [h["lr"] for h in second.history] == [h["lr"] for h in straight.history]
    for a, b in zip(second.history, straight.history):
        assert a["step"] == b["step"] and a["loss"] == b["loss"], (a, b)
    assert torch.equal(second.state["generator"], straight.state["generator"])
    # Moments too, not only the weights: a third run would continue the same way.
    opt_a, opt_b = second.state["optimizer"]["state"], straight.state["optimizer"]["state"]
    assert all(torch.equal(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"]) for k in opt_b)
    # The budget is summed over both runs and said in the log.
    runs = second.state["runs"]
    assert [(r["first_step"], r["steps"]) for r in runs] == [(0, 3), (3, 5)]
    assert second.state["seconds"] == pytest.approx(sum(r["seconds"] for r in runs))
    assert second.state["seconds"] > first.state["seconds"]
    assert "resumed at step 3" in lines[1]
    assert lines[-1].startswith("stopped (budget) at step 8; budget spent: 8 steps")
    assert "over 2 run(s)" in lines[-1]


def test_without_the_resume_state_the_run_is_not_the_same(tmp_path):
    # The check above can fail: resuming with only the weights (fresh optimiser) differs.
    straight = train(TINY, TINY_TRAIN, log=lambda _: None)
    first = train(TINY, TINY_TRAIN, max_steps=3, log=lambda _: None)
    weights_only = train(
        TINY, TINY_TRAIN, max_steps=5, log=lambda _: None, init=(first.model.state_dict(), "part")
    )
    diff = [
        not torch.equal(x, y)
        for x, y in zip(
            weights_only.model.state_dict().values(), straight.model.state_dict().values()
        )
    ]
    assert any(diff)


def test_a_stop_request_ends_the_run_with_a_resumable_state():
    calls = iter(range(100))
    result = train(TINY, TINY_TRAIN, log=lambda _: None, should_stop=lambda: next(calls) >= 2)
    assert result.stopped == "signal" and result.state["step"] == 2
    again = train(TINY, TINY_TRAIN, log=lambda _: None, resume=result.state)
    assert again.state["step"] == 8 and again.state["runs"][-1]["first_step"] == 2


def test_a_session_limit_stops_a_run_inside_its_budget():
    cfg = dataclasses.replace(TINY_TRAIN, total_steps=0, minutes=60.0)
    result = train(TINY, cfg, log=lambda _: None, session_minutes=0.0)
    assert result.stopped == "session" and result.state["step"] == 0


CLI_FLAGS = [
    "--patch-size=16",
    "--embed-dim=32",
    "--depth=3",
    "--batch-images=2",
    "--prompts-per-image=2",
    "--loss-size=64",
    "--precision=fp32",
    "--threads=1",
    "--total-steps=3",
    "--log-every=1",
    "--device=cpu",
]


def test_cli_resume_writes_a_plain_model_and_a_state_beside_it(tmp_path, capsys):
    out = tmp_path / "run.pth"
    assert main(["--out", str(out), *CLI_FLAGS, "--max-steps=1"]) == 0
    assert state_path(out).is_file()
    state_dict = torch.load(out, weights_only=True)
    assert list(state_dict) == list(Sam(config_from_state_dict(state_dict)).state_dict())
    assert main(["--resume", str(out), "--precision=fp32"]) == 0
    log = capsys.readouterr().out
    assert "resumed at step 1" in log
    assert "stopped (budget) at step 3; budget spent: 3 steps" in log
    assert load_training_state(out)["step"] == 3
    assert build_sam(checkpoint=out).config.patch_size == 16
    # Bad input: another recipe, a model without state, a state that is not one.
    assert main(["--resume", str(out), "--lr=0.1"]) == 2
    assert "cannot change lr" in capsys.readouterr().out
    plain = tmp_path / "plain.pth"
    plain.write_bytes(out.read_bytes())
    assert main(["--resume", str(plain)]) == 2
    assert "has no training state" in capsys.readouterr().out
    state_path(plain).write_bytes(b"not a state")
    assert main(["--resume", str(plain)]) == 2
    assert "is not a training state" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--resume", str(out), "--init", str(out)])  # exclusive


def test_cli_init_starts_a_new_run_from_a_models_weights(tmp_path, capsys):
    out = tmp_path / "run.pth"
    assert main(["--out", str(out), *CLI_FLAGS, "--max-steps=1"]) == 0
    tuned = tmp_path / "tuned.pth"
    assert main(["--out", str(tuned), "--init", str(out), *CLI_FLAGS[4:], "--max-steps=1"]) == 0
    state = load_training_state(tuned)
    assert state["step"] == 1 and state["init"].startswith(f"{out} sha256 ")
    assert f"weights from {out}" in capsys.readouterr().out


def test_batches_move_to_a_device_whole():
    batch = sample_batch(np.random.default_rng(0), TINY_TRAIN, TINY.image_size)
    assert batch.to(torch.device("cpu")) is batch
    moved = batch.to(torch.device("meta"))  # a device every machine has
    assert moved.images.is_meta
    for group in moved.groups:
        assert group.image_index.is_meta and group.targets.is_meta and group.coords.is_meta
        assert group.boxes is None or group.boxes.is_meta


def test_corrective_points_are_the_same_stream_on_any_device():
    targets = (torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    predictions = torch.zeros(4, 8, 8, dtype=torch.bool)
    a = corrective_points(predictions, targets, torch.Generator().manual_seed(0))
    b = corrective_points(predictions, targets, torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].device == targets.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_training_runs_on_cuda_and_resumes_there():
    first = train(TINY, TINY_TRAIN, max_steps=2, log=lambda _: None, device="cuda")
    assert first.state["runs"][0]["device"].startswith("cuda")
    assert next(first.model.parameters()).device.type == "cpu"  # the shipped model
    second = train(TINY, TINY_TRAIN, log=lambda _: None, device="cuda", resume=first.state)
    assert second.state["step"] == 8 and math.isfinite(second.history[-1]["loss"])


def test_signal_handlers_are_put_back_after_a_cli_run(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert main(["--out", str(tmp_path / "m.pth"), *CLI_FLAGS, "--max-steps=1"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_thread_tuner_tries_one_thread_early_and_keeps_the_faster():
    tuner = ThreadTuner(2, every=100, probe=4, first=10)
    used = [tuner.threads_for(s) for s in range(20)]
    assert used[:10] == [2] * 10 and used[10:14] == [1] * 4 and used[14:] == [2] * 6
    for threads, seconds in ((2, 20.0), (1, 3.5)):  # a contended machine
        tuner.record(threads, seconds)
    assert tuner.threads_for(20) == 1 and tuner.threads_for(100) == 2  # probes the other
    assert ThreadTuner(1).threads_for(10) == 1  # nothing to choose from
