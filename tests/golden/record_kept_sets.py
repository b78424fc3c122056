"""Record (or check) every family x method x retention kept set on the tiny checkpoints.

    python tests/golden/record_kept_sets.py            # writes tests/golden/kept_sets.json
The golden file was written before the redesign (issue 9); test_golden_kept_sets.py checks the code still keeps
exactly these tokens. One deliberate change since: RandomPrune no longer mixes the batch position into its seed
(issue 13), so the random / random+ivc sets of the second sample were re-recorded (the first sample's, drawn as
alone, did not change).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image

import ivcprune
from ivcprune.testing import load_processor, make_image, tiny_checkpoint, tiny_inputs

K = 2
METHODS = ("ivcp", "fastv", "fastv+ivc", "random", "random+ivc", "grid", "grid+ivc")
RETENTIONS = (0.5, 1.0)
PROMPT = "Locate the red circle on the left and output the bbox coordinates in JSON format."
DS_PROMPT = "<image>\nLocate <|ref|>the red car<|/ref|> in the given image."
GOLDEN = Path(__file__).with_name("kept_sets.json")


def _hf_case(family, cls_name):
    import transformers

    path = tiny_checkpoint(family, **({"max_pixels": 64 * 28 * 28} if family.startswith("qwen") else {}))
    model = getattr(transformers, cls_name).from_pretrained(path, attn_implementation="sdpa").eval()
    proc = load_processor(path)
    images = [make_image(168, 140, seed=1), make_image(112, 196, seed=2)]
    batch = tiny_inputs(family, proc, images, [PROMPT, PROMPT])
    if family == "internvl":
        from ivcprune.models.internvl import image_sizes

        batch["image_sizes"] = image_sizes(images)
    return model, batch, lambda m, b: m.generate(**b, max_new_tokens=2, do_sample=False)


def _picture(w, h, seed):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB")


def _deepseek_case(flavour, root):
    from ivcprune.models.deepseek_vl2 import DeepseekVL2ForCausalLM, DeepseekVL2Processor, make_tiny_deepseek_vl2

    path = make_tiny_deepseek_vl2(Path(root) / flavour, flavour, seed=1)
    model = DeepseekVL2ForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="sdpa")
    proc = DeepseekVL2Processor.from_pretrained(path)
    batch = proc(prompts=DS_PROMPT, images=[_picture(768, 384, seed=3)])
    return model.eval(), batch, lambda m, b: m.generate(**b, max_new_tokens=2, eos_token_id=-1, pad_token_id=0)


def cases(root):
    yield "qwen2_5_vl", lambda: _hf_case("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration")
    yield "qwen2_vl", lambda: _hf_case("qwen2_vl", "Qwen2VLForConditionalGeneration")
    yield "llava", lambda: _hf_case("llava", "LlavaForConditionalGeneration")
    yield "internvl", lambda: _hf_case("internvl", "InternVLForConditionalGeneration")
    yield "deepseek_vl2-tiny", lambda: _deepseek_case("tiny", root)
    yield "deepseek_vl2-small", lambda: _deepseek_case("small", root)


def record(root) -> dict:
    out = {}
    for family, build in cases(root):
        model, batch, gen = build()
        for name in METHODS:
            for rho in RETENTIONS:
                retention = None if (family == "llava" and name == "ivcp" and rho == 0.5) else rho
                with torch.no_grad(), ivcprune.prune(model, ivcprune.make_method(name, K, retention)) as trace:
                    gen(model, batch)
                sel = trace.selections[0]
                out[f"{family}|{name}|{rho}"] = [list(map(int, k)) for k in sel.kept]
        print(family, "done", file=sys.stderr)
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(record(tmp), indent=0, sort_keys=True))
    print("wrote", GOLDEN)
