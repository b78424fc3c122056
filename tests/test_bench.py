"""`ivcp bench` on a tiny in-memory config: files written, KV bytes equal the analytic value, FLOP model of docs/ALGORITHM.md §8."""

from __future__ import annotations

import json

import pytest
import torch

from ivcprune.tools import bench
from ivcprune.tools import benchkit as kit


def test_ideal_speedup_worked_example_of_algorithm_8():
    # Qwen2.5-VL-7B: q/o 3584^2, k/v 3584 x 512, MLP 3 x 3584 x 18944; H = 28, D = 128; K = 16 of 28, S 426 -> P 231
    weights = 2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944
    fm = {"c1": 2 * weights, "c2": 28 * 256, "num_layers": 28, "kv_heads": 4, "head_dim": 128}
    flops = kit.prefill_flops(fm, 426, 231, 16)
    assert flops["pruned"] / flops["full"] == pytest.approx(0.80, abs=0.005)
    assert kit.prefill_flops(fm, 426, 231, 16, pruned=False)["pruned"] == flops["full"]
    # bf16: 2 * 4 * 128 * 2 B = 2 KiB per token per layer, 56 KiB over 28 layers
    assert kit.analytic_kv_bytes(fm, 1, 2) == 56 * 1024


def test_flop_model_counts_the_real_7b_layer():
    shape = kit.scaled(kit.SHAPES["qwen2.5-vl-7b"], 1 / 28, 2)
    assert (shape.heads, shape.kv_heads, shape.hidden) == (1, 1, 128)
    model = kit.synthetic_model(kit.Shape(**{**shape.__dict__, "vocab": 64, "image_tokens": 4}), torch.float32, "sdpa")
    fm = kit.flop_model(model)
    h, i = shape.hidden, shape.intermediate
    assert fm["weights_per_layer"] == 4 * h * h + 3 * h * i
    assert fm["c2"] == 1 * 2 * 128 and fm["num_layers"] == 2


def test_scaled_layer_keeps_the_proportion():
    assert kit.scaled_layer(kit.SHAPES["qwen2.5-vl-7b"], 8) == 5  # 16 * 8 / 28 = 4.57
    assert kit.scaled_layer(kit.SHAPES["llava-1.5-7b"], 8) == 4
    assert kit.scaled_layer(kit.SHAPES["qwen2.5-vl-7b"], 28) == 16
    assert kit.scaled_layer(kit.SHAPES["quick"], 2) == 1


def test_flop_model_counts_active_experts_only():
    """Qwen3-VL MoE: a token touches num_experts_per_tok of num_experts expert MLPs (tiny: 2 of 4)."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    from ivcprune.testing import tiny_checkpoint

    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(tiny_checkpoint("qwen3_vl_moe"))
    layer = model.model.language_model.layers[0]
    dense = sum(p.numel() for n, p in layer.named_parameters() if p.ndim >= 2 and "experts" not in n)
    experts = sum(p.numel() for p in layer.mlp.experts.parameters())
    assert kit.flop_model(model)["weights_per_layer"] == dense + experts // 2


@pytest.mark.parametrize("shape", ["quick", "llava-1.5-7b", "qwen3-vl-8b"])
def test_bench_runs_a_tiny_config_and_writes_its_files(tmp_path, capsys, shape):
    tokens = "64" if shape == "quick" else "16"
    rc = bench.cli_main(["--synthetic", shape, "--layers", "3", "--width", "0.0625", "--image-tokens", tokens,
                         "--methods", "ivcp,grid+ivc,random", "--retention", "0.5", "--repeats", "2", "--warmup", "1",
                         "--decode-tokens", "3", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| unpruned |" in out and "| ivcp@0.5 |" in out
    for name in ("bench.json", "bench.md", "bench.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = json.loads((tmp_path / "bench.json").read_text())[0]
    rows = {r["setting"]: r for r in report["rows"]}
    assert set(rows) == {"unpruned", "ivcp@0.5", "grid+ivc@0.5", "random@0.5"}
    base = rows["unpruned"]
    assert base["kv_bytes"] == base["kv_bytes_analytic"] and base["measured_speedup"] == 1.0
    for name in ("ivcp@0.5", "random@0.5"):
        r = rows[name]
        assert r["kept_image_tokens"] == round(0.5 * int(tokens))
        assert r["kv_bytes"] == r["kv_bytes_record"] == r["kv_bytes_analytic"]  # live cache == record == analytic
        assert r["kept_tokens"] == r["prompt_length"] - int(tokens) + r["kept_image_tokens"]
        assert r["ideal_speedup"] > 1.0 and r["decode_ms_per_token"] > 0 and r["selection_ms"] > 0
        assert len(r["raw_text_ms"]) == 2 and r["peak_prefill_mib"] is not None


def test_quick_prints_the_summary(capsys, monkeypatch):
    small = kit.Shape("qwen2_5_vl", heads=2, kv_heads=1, head_dim=32, intermediate=96, layers=3, vocab=64, theta=1e6,
                      image_tokens=36, layer=1)
    monkeypatch.setitem(kit.SHAPES, "quick", small)
    assert bench.cli_main(["--quick", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "measured speedup" in out and "ideal (FLOPs)" in out and "selection overhead" in out
    assert "K=1/3" in out
