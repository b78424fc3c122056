#!/usr/bin/env python
"""Compare ivcprune's DeepSeek-VL2 with the official ``deepseek_vl2`` package on one image (needs real weights).

The two cannot share a process: ours needs transformers 5.23, the official code transformers 4.38.2
(+ xformers, usually a GPU). So the check runs in two environments and exchanges one ``.pt`` file:

  # 1) in the ivcprune env (CPU works; GPU faster):
  python scripts/compare_deepseek_vl2_official.py ours \\
      --model deepseek-ai/deepseek-vl2-small --image giraffe.jpg --out ours.pt [--device cuda]

  # 2) in the official env (git clone deepseek-ai/DeepSeek-VL2 && pip install -e . ; torch 2.0.1,
  #    transformers 4.38.2, xformers), from this repository's root:
  python scripts/compare_deepseek_vl2_official.py official \\
      --model deepseek-ai/deepseek-vl2-small --image giraffe.jpg --ours ours.pt --out official.pt --device cuda

Step 2 re-runs the official processor on the same image and prompt, reports whether its inputs equal
ours, feeds OUR inputs to the official model (so the logit difference is the model's alone) and prints:

  inputs: input_ids equal=True  images_seq_mask equal=True  spatial_crop equal=True  max |pixel diff|=0
  text positions compared: 23   max |logit diff|=0.0625  mean |logit diff|=0.0041
  top-1 agreement over all 1047 positions: 0.998   greedy tokens (16) equal: True

Expect bf16-level logit differences (max |diff| of order 1e-1 on logits of magnitude ~20, mean far
smaller), top-1 agreement near 1.0, and identical short greedy outputs. ``compare OURS OFFICIAL``
re-prints the summary from the two files. Only the ``ours`` and ``compare`` paths run without the
official package; they are covered by tests/test_deepseek_vl2_model.py on a tiny random checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

DEFAULT_PROMPT = "<image>\n<|ref|>The giraffe at the back.<|/ref|>."
GREEDY_TOKENS = 16


def conversation(prompt: str, image_path: str) -> list[dict]:
    return [{"role": "<|User|>", "content": prompt, "images": [image_path]}, {"role": "<|Assistant|>", "content": ""}]


def _load_rgb(path: str):
    from PIL import Image

    with Image.open(path) as fh:
        return fh.convert("RGB")


def _summary_logits(logits: torch.Tensor, images_seq_mask: torch.Tensor) -> dict:
    """Keep full logits only at text positions (image positions would be hundreds of MB), argmax everywhere."""
    text = ~images_seq_mask[0].bool()
    return {"text_logits": logits[0, text].float().cpu(), "argmax": logits[0].argmax(-1).cpu()}


def run_ours(model_path: str, image_path: str, prompt: str = DEFAULT_PROMPT, device: str = "cpu",
             dtype: str = "bfloat16", max_new_tokens: int = GREEDY_TOKENS) -> dict:
    """Preprocess and run ivcprune's model; returns the record written by the ``ours`` step."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ivcprune.models.deepseek_vl2 import DeepseekVL2ForCausalLM, DeepseekVL2Processor

    processor = DeepseekVL2Processor.from_pretrained(model_path)
    model = DeepseekVL2ForCausalLM.from_pretrained(model_path, torch_dtype=dtype, attn_implementation="eager",
                                                   device=device)
    inputs = processor(conversation(prompt, image_path), images=[_load_rgb(image_path)])
    batch = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=processor.eos_id)
    record = {k: v.cpu() for k, v in inputs.items()}
    record.update(_summary_logits(logits, inputs["images_seq_mask"]))
    record["greedy"] = out[0, inputs["input_ids"].shape[1]:].cpu()
    record["prompt"], record["dtype"] = prompt, dtype
    return record


def run_official(model_path: str, image_path: str, ours: dict, device: str = "cuda",
                 max_new_tokens: int = GREEDY_TOKENS) -> dict:
    """Run the official package on OUR inputs (plus its own preprocessing for an input check)."""
    from deepseek_vl2.models import DeepseekVLV2ForCausalLM, DeepseekVLV2Processor  # noqa: F401 (registers)
    from transformers import AutoModelForCausalLM

    processor = DeepseekVLV2Processor.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True)
    model = model.to(torch.bfloat16).to(device).eval()
    theirs_in = processor(conversations=conversation(ours["prompt"], image_path), images=[_load_rgb(image_path)],
                          force_batchify=True, system_prompt="")
    names = ("input_ids", "attention_mask", "images_seq_mask", "images", "images_spatial_crop")
    feed = {k: ours[k].to(device) for k in names}
    feed["images"] = feed["images"].to(torch.bfloat16)
    feed["attention_mask"] = feed["attention_mask"].long()  # 4.38's mask converter rejects bool
    tok = processor.tokenizer
    with torch.no_grad():
        embeds = model.prepare_inputs_embeds(**{k: feed[k] for k in names if k != "attention_mask"})
        logits = model.language(inputs_embeds=embeds, attention_mask=feed["attention_mask"]).logits
        gen = model.language.generate(inputs_embeds=embeds, attention_mask=feed["attention_mask"],
                                      pad_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, max_new_tokens=max_new_tokens,
                                      do_sample=False, use_cache=True)
    record = {f"official_{k}": getattr(theirs_in, k).cpu() for k in names}
    record.update(_summary_logits(logits, ours["images_seq_mask"]))
    record["greedy"] = gen[0].cpu()
    return record


def compare(ours: dict, theirs: dict) -> dict:
    """Numbers printed by the script: input equality, logit differences, top-1 and greedy agreement."""
    stats = {}
    if "official_input_ids" in theirs:
        for k in ("input_ids", "images_seq_mask", "images_spatial_crop"):
            a, b = ours[k], theirs[f"official_{k}"]
            stats[f"{k}_equal"] = a.shape == b.shape and bool(torch.equal(a.long(), b.long()))
        a, b = ours["images"].float(), theirs["official_images"].float()
        stats["max_pixel_diff"] = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
    diff = (ours["text_logits"].float() - theirs["text_logits"].float()).abs()
    stats["text_positions"] = int(ours["text_logits"].shape[0])
    stats["max_abs_logit_diff"] = float(diff.max())
    stats["mean_abs_logit_diff"] = float(diff.mean())
    stats["positions"] = int(ours["argmax"].numel())
    stats["top1_agreement"] = float((ours["argmax"] == theirs["argmax"]).float().mean())
    n = min(len(ours["greedy"]), len(theirs["greedy"]))
    stats["greedy_tokens"] = n
    stats["greedy_equal"] = bool(torch.equal(ours["greedy"][:n], theirs["greedy"][:n]))
    return stats


def format_report(stats: dict) -> str:
    lines = []
    if "input_ids_equal" in stats:
        lines.append(
            f"inputs: input_ids equal={stats['input_ids_equal']}  images_seq_mask equal={stats['images_seq_mask_equal']}"
            f"  spatial_crop equal={stats['images_spatial_crop_equal']}  max |pixel diff|={stats['max_pixel_diff']:.3g}"
        )
    lines.append(f"text positions compared: {stats['text_positions']}   max |logit diff|={stats['max_abs_logit_diff']:.4g}"
                 f"  mean |logit diff|={stats['mean_abs_logit_diff']:.4g}")
    lines.append(f"top-1 agreement over all {stats['positions']} positions: {stats['top1_agreement']:.4f}"
                 f"   greedy tokens ({stats['greedy_tokens']}) equal: {stats['greedy_equal']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    for name in ("ours", "official"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True, help="hub id or local folder of an official checkpoint")
        p.add_argument("--image", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--device", default="cpu" if name == "ours" else "cuda")
        p.add_argument("--max-new-tokens", type=int, default=GREEDY_TOKENS)
        if name == "ours":
            p.add_argument("--prompt", default=DEFAULT_PROMPT)
            p.add_argument("--dtype", default="bfloat16")
        else:
            p.add_argument("--ours", required=True, help="file written by the 'ours' step")
    p = sub.add_parser("compare")
    p.add_argument("ours")
    p.add_argument("official")
    args = ap.parse_args(argv)
    if args.step == "ours":
        rec = run_ours(args.model, args.image, args.prompt, args.device, args.dtype, args.max_new_tokens)
        torch.save(rec, args.out)
        print(f"wrote {args.out}: {rec['input_ids'].shape[1]} tokens, greedy {rec['greedy'].tolist()}")
        return 0
    if args.step == "official":
        ours = torch.load(args.ours)
        rec = run_official(args.model, args.image, ours, args.device, args.max_new_tokens)
        torch.save(rec, args.out)
    else:
        ours, rec = torch.load(args.ours), torch.load(args.official)
    print(format_report(compare(ours, rec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
