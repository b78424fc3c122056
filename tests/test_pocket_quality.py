"""The shipped pocket model (ivcprune/pocket/model): loads like a checkpoint, and each pruning method's accuracy on
a fixed scene set equals the value recorded when the model shipped.

A change that keeps every runtime invariant but alters *which* tokens a method keeps shows up here. Acc@0.5 is near
saturation on this localization model (54-60 of 60 scenes at 50 % retention), so the mean IoU is checked as well: it
separates the methods far more (0.76 grid, 0.83 random, 0.91-0.92 IVC-Prune / IVC removed, 0.97-0.98 FastV and
FastV+IVC, 1.00 unpruned; RECORDED). Tolerances: 2 of the 60 scenes for Acc@0.5 (0.034) and 0.03 for mean IoU
(about two answers moving by a whole object). The evaluation is deterministic on one machine (float32, greedy, fixed
scenes); the slack is for other CPUs / BLAS builds, where float-level differences can flip a greedy coordinate
digit that sits on a near-tie. Tests never retrain: the weights are the shipped file.
"""

from __future__ import annotations

import pytest

from ivcprune.pocket.scenes import SIDE, scene

SCENE_SEED = 7  # held-out: training draws scene seeds >= 10**12, the trainer's evaluation used 99, the demo 2026
N_SCENES = 60
LAYER, RETENTION = 3, 0.5
TOLERANCE = 2 / N_SCENES
IOU_TOLERANCE = 0.03
# (Acc@0.5 as hits / 60, mean IoU) on scenes SCENE_SEED * 1_000_003 + i, i < 60, of the shipped model's task, recorded
# with the shipped weights (MODEL_CARD.md) at K = 3 of 6 layers and 50 % retention
RECORDED = {
    "unpruned": (60 / N_SCENES, 0.9958),
    "ivcp": (57 / N_SCENES, 0.9206),
    "fastv": (60 / N_SCENES, 0.9653),
    "fastv+ivc": (60 / N_SCENES, 0.9764),
    # re-recorded when the random draw stopped depending on the batch position (issue 13): the shipped value, 54 and
    # 0.7814, came from 30 different draws in batches of 30; now every scene draws as alone (55 and 0.8273 at batch
    # 30 and at batch 1)
    "random": (55 / N_SCENES, 0.8273),
    "grid": (55 / N_SCENES, 0.7587),
    "ivc_removed": (59 / N_SCENES, 0.9125),
}


@pytest.fixture(scope="module")
def pocket():
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from ivcprune.models.processor_loading import load_processor
    from ivcprune.tools.demo import pocket_model_dir

    torch.set_num_threads(1)
    folder = pocket_model_dir()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return model, load_processor(folder), folder


@pytest.fixture(scope="module")
def scenes():
    from ivcprune.tools.demo import pocket_model_dir, task_objects

    return [scene(SCENE_SEED * 1_000_003 + i, task_objects(pocket_model_dir())) for i in range(N_SCENES)]


def test_shipped_folder_is_a_small_stock_checkpoint(pocket):
    model, processor, folder = pocket
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert (folder / "model.safetensors").stat().st_size <= 10 * 2**20
    assert (folder / "MODEL_CARD.md").is_file()
    assert model.config.text_config.num_hidden_layers == 6
    from PIL import Image

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nLocate the red circle."}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    # the pocket template writes the turn's text before the image as well as after it
    assert text.count("Locate the red circle.") == 2
    assert text.index("Locate the red circle.") < text.index("<|vision_start|>")
    enc = processor(text=[text], images=[Image.new("RGB", (SIDE, SIDE))], return_tensors="pt")
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 100


def test_training_inputs_equal_the_processor_inputs(pocket):
    """The trainer builds its batches itself; they must be what the harness's processor call gives (incl.
    mm_token_type_ids, without which the model silently uses 1-D text positions instead of M-RoPE)."""
    import torch

    from ivcprune.pocket.train import encode_batch, prompt_text

    _, processor, _ = pocket
    s = scene(11)
    ref = processor(text=[prompt_text(processor, s["expression"])], images=[s["image"]], return_tensors="pt")
    ours = encode_batch(processor, [s], with_answer=False)
    assert sorted(ref) == sorted(ours)
    assert all(torch.equal(ref[k], ours[k]) for k in ref)


def test_scenes_are_deterministic_and_unambiguous():
    a, b = scene(123), scene(123)
    assert a["jpeg"] == b["jpeg"] and a["objects"] == b["objects"] and a["target"] == b["target"]
    for s in (scene(i) for i in range(50)):
        colours = [o["colour"] for o in s["objects"]]
        assert 2 <= len(colours) <= 3 and len(set(colours)) == len(colours)
        assert s["expression"] == f"the {s['objects'][s['target']]['colour']} {s['objects'][s['target']]['kind']}"
        assert all(v % 28 == 0 for o in s["objects"] for v in o["box"])


@pytest.mark.parametrize("method", list(RECORDED))
def test_method_accuracy_matches_the_recorded_value(pocket, scenes, method):
    from ivcprune.methods import make_method
    from ivcprune.pocket.train import greedy_eval

    model, processor, _ = pocket
    pruning = None if method == "unpruned" else make_method(method, LAYER, RETENTION)
    got = greedy_eval(model, processor, scenes, batch=30, method=pruning)
    acc, miou = RECORDED[method]
    assert abs(got["acc@0.5"] - acc) <= TOLERANCE + 1e-9, f"{method}: Acc@0.5 {got['acc@0.5']:.4f} vs recorded {acc:.4f}"
    assert abs(got["mean_iou"] - miou) <= IOU_TOLERANCE, f"{method}: mean IoU {got['mean_iou']:.4f} vs recorded {miou}"
