"""``ivcp pocket train``: train the pocket grounding model from scratch on freshly drawn scenes (one CPU thread).

Every training sample is a new scene (seed ``TRAIN_SEED_BASE + seed * 10**9 + step * batch + i``, disjoint
from the held-out seeds ``seed * 1_000_003 + i`` of ``scenes.write_mdetr_source`` for small seeds), so resuming
at step s draws exactly the batches an uninterrupted run would. The prompt is the harness's own
(``grounding_text(expression, 'qwen2_5_vl')`` after the image, rendered by the pocket chat template) and the
loss covers only the answer ``{"bbox_2d": [x1, y1, x2, y2]}<|im_end|>``.

Periodic greedy evaluation on held-out scenes prints Acc@0.5 and the correct-vs-wrong-object diagnostic: of
the answers that hit *some* object (IoU >= 0.5), the share that hit the named one (chance about 0.42).
A checkpoint (model, optimizer, step, elapsed time) is written at every evaluation; the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

TRAIN_SEED_BASE = 10**12
N_IMAGE_TOKENS = 100


def prompt_text(processor, expression: str) -> str:
    from ivcprune.eval.datasets.grounding import grounding_text

    from .build import messages

    return processor.apply_chat_template(messages(grounding_text(expression, "qwen2_5_vl")),
                                         add_generation_prompt=True, tokenize=False)


def encode_batch(processor, scenes: list[dict], with_answer: bool, mrope: bool = True):
    """input_ids / attention_mask / pixel_values / image_grid_thw / mm_token_type_ids (+ labels); right padding for
    training, left padding for generation. ``mrope=False`` leaves out mm_token_type_ids (1-D text positions)."""
    import torch

    from .scenes import answer

    tok = processor.tokenizer
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    seqs, labels = [], []
    for s in scenes:
        text = prompt_text(processor, s["expression"]).replace("<|image_pad|>", "<|image_pad|>" * N_IMAGE_TOKENS)
        ids = tok(text)["input_ids"]
        if with_answer:
            ans = tok(answer(s["objects"][s["target"]]["box"]) + "<|im_end|>")["input_ids"]
            labels.append([-100] * len(ids) + ans)
            ids = ids + ans
        seqs.append(ids)
    width = max(len(x) for x in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, ids in enumerate(seqs):
        if with_answer:
            input_ids[i, :len(ids)] = torch.tensor(ids)
            mask[i, :len(ids)] = 1
            lab[i, :len(ids)] = torch.tensor(labels[i])
        else:
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
    pix = processor.image_processor(images=[s["image"] for s in scenes], return_tensors="pt")
    grid = pix["image_grid_thw"]
    if int((grid.prod(-1) // 4).sum()) != N_IMAGE_TOKENS * len(scenes):
        raise ValueError(f"unexpected image grid {grid.tolist()}")
    # mm_token_type_ids (1 on image tokens) as the processor returns it: without it the model cannot compute the
    # M-RoPE (t, h, w) positions and falls back to 1-D text positions
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    out = {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pix["pixel_values"],
           "image_grid_thw": grid}
    if mrope:
        out["mm_token_type_ids"] = (input_ids == image_id).int()
    if with_answer:
        out["labels"] = lab
    return out


def judge(text: str, s: dict) -> tuple[bool, bool, float]:
    """(hit the named object, hit some object) at IoU >= 0.5, and the IoU with the named object."""
    from ivcprune.eval.datasets.grounding import iou, parse_box

    from .scenes import xyxy

    box = parse_box(text, "qwen2_5_vl")
    if box is None:
        return False, False, 0.0
    ious = [iou(box, xyxy(o["box"])) for o in s["objects"]]
    return ious[s["target"]] >= 0.5, any(v >= 0.5 for v in ious), ious[s["target"]]


def greedy_eval(model, processor, scenes: list[dict], batch: int = 25, method=None, mrope: bool = True) -> dict:
    """Greedy answers for ``scenes`` (left-padded batches), optionally under ``ivcprune.prune(model, method)``."""
    import contextlib

    import torch

    from ivcprune import prune

    tok = processor.tokenizer
    correct = any_hit = 0
    total_iou = 0.0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(scenes), batch):
            part = scenes[i:i + batch]
            enc = encode_batch(processor, part, with_answer=False, mrope=mrope)
            with prune(model, method) if method is not None else contextlib.nullcontext():
                out = model.generate(**enc, max_new_tokens=32, do_sample=False)
            for s, row in zip(part, out[:, enc["input_ids"].shape[1]:]):
                c, h, v = judge(tok.decode(row, skip_special_tokens=True), s)
                correct += c
                any_hit += h
                total_iou += v
    model.train(was_training)
    n = len(scenes)
    return {"acc@0.5": correct / n, "hit_any": any_hit / n, "named_share": correct / any_hit if any_hit else 0.0,
            "mean_iou": total_iou / n}


def export(model, processor, gen: dict, folder: Path, card: dict | None = None) -> None:
    from transformers import GenerationConfig

    from ivcprune.models.processor_loading import save_processor

    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(**gen, do_sample=False)
    model.save_pretrained(folder)
    save_processor(processor, folder, {"video_processor_type": "Qwen2VLVideoProcessor",
                                       "size": {"shortest_edge": 3136, "longest_edge": 12845056},
                                       "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2})
    if card is not None:
        (folder / "training.json").write_text(json.dumps(card, indent=1, sort_keys=True))


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def cli_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ivcp pocket train", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/pocket_train", help="checkpoints, log and the exported model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=400, help="steps between greedy evaluations + checkpoints")
    ap.add_argument("--eval-n", type=int, default=150, help="held-out scenes per evaluation")
    ap.add_argument("--eval-seed", type=int, default=99, help="held-out scene seed (the demo uses others)")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (checkpoint + export) after this long")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--objects", type=int, nargs=2, default=[2, 3], metavar=("MIN", "MAX"),
                    help="objects per scene (default 2 3: referring; 1 1: single-object localization)")
    ap.add_argument("--stop-step", type=int, default=None,
                    help="stop (checkpoint + export) after this step, keeping the --steps schedule")
    ap.add_argument("--text-positions", action="store_true",
                    help="leave out mm_token_type_ids: 1-D text positions instead of M-RoPE (phases 1-3 of the "
                         "shipped model were trained so by mistake; only to reproduce them)")
    ap.add_argument("--init", default=None, help="start from the weights of this ckpt.pt (a fresh optimizer)")
    args = ap.parse_args(argv)

    import torch
    from tqdm import tqdm

    from .build import ARCH, build
    from .scenes import scene

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor, gen = build(seed=args.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    ckpt = out / "ckpt.pt"
    step, elapsed, history = 0, 0.0, []
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        print(f"resumed at step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    elif args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=False)["model"])
        print(f"initialised from {args.init}", flush=True)
    objects = tuple(args.objects)
    held_out = [scene(args.eval_seed * 1_000_003 + i, objects) for i in range(args.eval_n)]
    log = open(out / "log.jsonl", "a")
    t_start = time.perf_counter() - elapsed
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pocket model: {n_params / 1e6:.2f} M parameters, arch {ARCH}", flush=True)

    def save(final: bool = False) -> None:
        tmp = out / "ckpt.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "elapsed": time.perf_counter() - t_start, "history": history, "args": vars(args)}, tmp)
        os.replace(tmp, ckpt)
        command = "ivcp pocket train " + " ".join(argv if argv is not None else sys.argv[1:])
        card = {"command": command, "args": vars(args), "steps": step, "history": history, "parameters": n_params,
                "minutes": (time.perf_counter() - t_start) / 60, "arch": ARCH}
        export(model, processor, gen, out / "model", card)

    bar = tqdm(total=args.steps, initial=step, desc="pocket train", mininterval=10)
    running = None
    while step < args.steps:
        batch = [scene(TRAIN_SEED_BASE + args.seed * 10**9 + step * args.batch + i, objects)
                 for i in range(args.batch)]
        enc = encode_batch(processor, batch, with_answer=True, mrope=not args.text_positions)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        loss = model(**enc).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}")
        minutes = (time.perf_counter() - t_start) / 60
        stop = (args.max_minutes is not None and minutes >= args.max_minutes) or step == args.stop_step
        if step % args.eval_every == 0 or step == args.steps or stop:
            res = greedy_eval(model, processor, held_out, mrope=not args.text_positions)
            rec = {"step": step, "minutes": round((time.perf_counter() - t_start) / 60, 2), "loss": round(running, 4),
                   **{k: round(v, 4) for k, v in res.items()}}
            history.append(rec)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            tqdm.write(json.dumps(rec))
            save()
        if stop:
            tqdm.write(f"stopping at step {step} (--max-minutes {args.max_minutes}, --stop-step {args.stop_step})")
            break
    bar.close()
    print(f"done: step {step}, exported to {out / 'model'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main())
