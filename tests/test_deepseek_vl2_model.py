"""DeepSeek-VL2 on stock transformers: offline invariants of docs/DEEPSEEK_VL2.md §8 on tiny random checkpoints."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from ivcprune.models.deepseek_vl2 import (
    CheckpointMismatchError, DeepseekVL2ForCausalLM, DeepseekVL2Processor, grounding_prompt, make_tiny_deepseek_vl2,
    num_image_tokens, parse_config, select_best_resolution,
)
from ivcprune.models.deepseek_vl2.configuration import build_text_config
from ivcprune.models.deepseek_vl2.factory import official_config
from ivcprune.models.deepseek_vl2.processing import DEFAULT_CANDIDATES
from ivcprune.models.deepseek_vl2.projector import unfold_2x2

REPO = Path(__file__).resolve().parents[1]
PAD_VALUE = (127 / 255 - 0.5) / 0.5  # -0.00392

# N(tw, th) = 210 + 1 + 14*th*(14*tw + 1) for every official candidate (W, H), written out.
EXPECTED_TOKENS = {
    (384, 384): 421, (384, 768): 631, (768, 384): 617, (384, 1152): 841, (1152, 384): 813,
    (384, 1536): 1051, (1536, 384): 1009, (768, 768): 1023, (384, 1920): 1261, (1920, 384): 1205,
    (384, 2304): 1471, (2304, 384): 1401, (768, 1152): 1429, (1152, 768): 1415, (384, 2688): 1681,
    (2688, 384): 1597, (384, 3072): 1891, (3072, 384): 1793, (768, 1536): 1835, (1536, 768): 1807,
    (384, 3456): 2101, (3456, 384): 1989, (1152, 1152): 2017,
}
# docs/DEEPSEEK_VL2.md §5 test vectors: original size -> chosen canvas -> image tokens.
SECTION5 = [
    ((384, 384), (384, 384), 421), ((385, 384), (768, 384), 617), ((640, 480), (768, 768), 1023),
    ((1024, 768), (1152, 768), 1415), ((1920, 1080), (1536, 768), 1807), ((500, 1000), (768, 1152), 1429),
    ((2000, 300), (2304, 384), 1401), ((100, 1000), (384, 1152), 841),
]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsvl2")
    return {fl: make_tiny_deepseek_vl2(root / fl, fl, seed=0) for fl in ("tiny", "small", "base")}


_MODELS: dict = {}


@pytest.fixture(scope="module")
def load(ckpts):
    def get(flavour: str, attn: str = "sdpa") -> DeepseekVL2ForCausalLM:
        key = (flavour, attn)
        if key not in _MODELS:
            _MODELS[key] = DeepseekVL2ForCausalLM.from_pretrained(ckpts[flavour], torch_dtype=torch.float32,
                                                                  attn_implementation=attn)
        return _MODELS[key]

    yield get
    _MODELS.clear()


@pytest.fixture(scope="module")
def proc(ckpts):
    return DeepseekVL2Processor.from_pretrained(ckpts["tiny"])


def _img(w, h, seed=0):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


# ---- processor: tiling and token counts -------------------------------------------------------------
def test_candidate_list_is_official_and_counts_match_formula():
    assert len(DEFAULT_CANDIDATES) == 23 and set(DEFAULT_CANDIDATES) == set(EXPECTED_TOKENS)
    for (w, h), n in EXPECTED_TOKENS.items():
        assert num_image_tokens(w // 384, h // 384) == n
    assert max(EXPECTED_TOKENS.values()) == 2101


def test_every_candidate_tiling_gives_formula_token_count(proc):
    for (w, h), expected in EXPECTED_TOKENS.items():
        batch = proc(prompts="<image>\nWhat is it?", images=[Image.new("RGB", (w, h), (10, 200, 30))])
        tw, th = batch["images_spatial_crop"][0, 0].tolist()
        assert (tw * 384, th * 384) == (w, h)
        assert int(batch["images_seq_mask"].sum()) == expected
        assert batch["images"].shape[1] == 1 + tw * th
        assert int((batch["input_ids"] == proc.image_token_id).sum()) == expected


@pytest.mark.parametrize("size,canvas,tokens", SECTION5)
def test_section5_vectors(proc, size, canvas, tokens):
    assert select_best_resolution(size, DEFAULT_CANDIDATES) == canvas
    tw, th = proc.tiling(size)
    assert proc.num_image_tokens(tw, th) == tokens


def test_three_images_are_not_tiled(proc):
    imgs = [_img(640, 480, 1), _img(1920, 1080, 2), _img(100, 1000, 3)]
    batch = proc(prompts="<image><image>\n<image>\nCompare them.", images=imgs)
    assert batch["images_spatial_crop"][0].tolist() == [[1, 1]] * 3
    assert int(batch["images_seq_mask"].sum()) == 3 * 421
    tiles = batch["images"][0]
    assert tiles.shape == (6, 3, 384, 384)
    for k in range(3):
        assert torch.equal(tiles[2 * k], tiles[2 * k + 1])  # global == local for 1x1


def test_global_view_letterbox_pad_value(proc):
    tiles, (tw, th) = proc.process_image(Image.new("RGB", (768, 384), (255, 0, 0)), cropping=True)
    assert (tw, th) == (2, 1) and tiles.shape == (3, 3, 384, 384)
    glob = tiles[0]
    assert torch.allclose(glob[:, :96], torch.full_like(glob[:, :96], PAD_VALUE))
    assert torch.allclose(glob[:, 288:], torch.full_like(glob[:, 288:], PAD_VALUE))
    assert torch.allclose(glob[0, 96:288], torch.ones_like(glob[0, 96:288]))  # red channel, no pad
    assert abs(PAD_VALUE + 0.00392) < 1e-5


# ---- tokenizer, chat format, grounding ---------------------------------------------------------------
def test_tokenizer_ids_equal_raw_tokenizers(ckpts, proc):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(ckpts["tiny"] / "tokenizer.json"))
    for text in ["<|User|>: hello world\n\n<|Assistant|>:", "Locate <|ref|>the cat<|/ref|> in the given image.",
                 "naïve café  123 [[1, 2, 3, 4]]", "<｜end▁of▁sentence｜><|det|>"]:
        assert proc.tokenizer.encode(text, add_special_tokens=False) == raw.encode(text, add_special_tokens=False).ids


def test_single_and_multi_turn_token_layout(proc):
    enc = proc.encode_text
    img = [proc.image_token_id] * 421
    one = proc(prompts="<image>\nWhat?", images=[_img(384, 384)])
    assert one["input_ids"][0].tolist() == [proc.bos_id] + enc("<|User|>: ") + img + enc("\nWhat?\n\n<|Assistant|>:")
    conv = [{"role": "<|User|>", "content": "<image>\nA?"}, {"role": "<|Assistant|>", "content": " B "},
            {"role": "<|User|>", "content": "C?"}, {"role": "<|Assistant|>", "content": ""}]
    multi = proc(conv, images=[_img(384, 384)])
    expected = ([proc.bos_id] + enc("<|User|>: ") + img + enc("\nA?\n\n<|Assistant|>:") + enc("B") + [proc.eos_id]
                + enc("<|User|>: C?\n\n<|Assistant|>:"))
    assert multi["input_ids"][0].tolist() == expected
    assert multi["input_ids"][0, -1].item() != proc.eos_id
    with pytest.raises(ValueError):
        proc(prompts="<image>\nno image given", images=[])


def test_grounding_tokens_present(proc):
    ids = proc(prompts=grounding_prompt("the red cat"), images=[_img(500, 300)])["input_ids"][0].tolist()
    vocab = proc.tokenizer.get_vocab()
    for tok in ("<|ref|>", "<|/ref|>"):
        assert ids.count(vocab[tok]) == 1
    for tok in ("<|det|>", "<|/det|>", "<|grounding|>", "<|User|>", "<|Assistant|>", "<image>"):
        assert tok in vocab
    det = [vocab["<|det|>"]] + proc.encode_text("[[1, 2, 3, 4]]") + [vocab["<|/det|>"]]
    assert proc.decode(det) == "<|det|>[[1, 2, 3, 4]]<|/det|>"


def test_left_padded_batch_layout(proc):
    batch = proc(prompts=["<image>\nDescribe the image.", "Hi"], images=[[_img(640, 480)], []])
    assert batch["attention_mask"].dtype == torch.bool
    short = batch["attention_mask"][1]
    assert not short[0] and short[-1] and batch["input_ids"][1, 0].item() == proc.pad_id
    assert batch["images"].shape == (2, 5, 3, 384, 384) and float(batch["images"][1].abs().sum()) == 0
    assert batch["images_spatial_crop"].tolist() == [[[2, 2]], [[0, 0]]]


# ---- configuration and loading -----------------------------------------------------------------------
def test_language_default_fill_and_variant_classes():
    base_lm = {  # the published base language_config omits layers, heads, ranks and head dims
        "vocab_size": 129280, "hidden_size": 2560, "intermediate_size": 12288, "moe_intermediate_size": 1536,
        "n_routed_experts": 72, "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
        "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True, "routed_scaling_factor": 2.0,
        "n_group": 1, "topk_group": 1, "q_lora_rank": None, "bos_token_id": 0, "eos_token_id": 1,
        "max_position_embeddings": 4096,
    }
    kind, cfg = build_text_config(base_lm)
    assert kind == "v3" and type(cfg).__name__ == "DeepseekV3Config"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 32, 32)
    assert (cfg.kv_lora_rank, cfg.q_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim) == (
        512, None, 128, 64, 128)
    assert cfg.rope_parameters["rope_theta"] == 10000.0 and cfg.rms_norm_eps == 1e-6 and cfg.rope_interleave
    assert (cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor, cfg.tie_word_embeddings) == (1, 1, 2.0, False)
    for flavour, name in (("tiny", "DeepseekOcr2TextConfig"), ("small", "DeepseekV2Config")):
        assert type(parse_config(official_config(flavour, 416)).text_config).__name__ == name
    bad = official_config("small", 416)
    del bad["tile_tag"]
    with pytest.raises(ValueError, match="tile_tag"):
        parse_config(bad)
    with pytest.raises(ValueError, match="tile_tag"):
        parse_config({**official_config("small", 416), "tile_tag": "1D"})


def test_checkpoint_uses_official_keys(ckpts):
    keys = set()
    for f in sorted(ckpts["base"].glob("*.safetensors")):
        keys |= set(load_file(str(f)))
    assert {"image_newline", "view_seperator", "vision.pos_embed", "projector.layers.0.weight",
            "projector.layers.2.weight", "language.lm_head.weight", "language.model.embed_tokens.weight",
            "language.model.layers.0.mlp.gate_proj.weight", "language.model.layers.1.self_attn.kv_b_proj.weight",
            "language.model.layers.2.mlp.experts.7.down_proj.weight",
            "language.model.layers.1.mlp.gate.e_score_correction_bias"} <= keys
    assert len([k for k in keys if k.startswith("vision.attn_pool.")]) == 13
    assert not any(k.endswith("gate_up_proj") for k in keys)


def _rewrite_first_shard(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    shard = sorted(dst.glob("*.safetensors"))[0]
    state = load_file(str(shard))
    edit(state)
    save_file(state, str(shard))
    return dst


@pytest.mark.parametrize("flavour", ["tiny", "base"])
def test_loading_raises_on_missing_or_stray_key(ckpts, tmp_path, flavour):
    def drop(state):
        victim = next(k for k in sorted(state) if ".experts." in k or k.startswith("image_newline"))
        state.pop(victim)

    missing = _rewrite_first_shard(ckpts[flavour], tmp_path / "missing", drop)
    with pytest.raises(CheckpointMismatchError) as err:
        DeepseekVL2ForCausalLM.from_pretrained(missing, torch_dtype=torch.float32)
    assert len(err.value.missing) == 1 and not err.value.unexpected

    stray = _rewrite_first_shard(ckpts[flavour], tmp_path / "stray",
                                 lambda s: s.__setitem__("language.model.layers.0.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointMismatchError) as err:
        DeepseekVL2ForCausalLM.from_pretrained(stray, torch_dtype=torch.float32)
    assert err.value.unexpected == ["language.model.layers.0.extra.weight"] and not err.value.missing


def test_expert_fusion_matches_per_expert_reference(ckpts, load):
    """MoE layer output against a per-expert loop over the *checkpoint's* unfused tensors, all routers."""
    for flavour in ("tiny", "small", "base"):
        model = load(flavour)
        state = {}
        for f in ckpts[flavour].glob("*.safetensors"):
            state.update({k: v.float() for k, v in load_file(str(f)).items() if ".layers.1.mlp." in k})
        p = "language.model.layers.1.mlp."
        x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
        logits = x @ state[p + "gate.weight"].T
        if flavour == "base":
            scores = logits.sigmoid()
            idx = (scores + state[p + "gate.e_score_correction_bias"]).topk(2, -1).indices
            w = scores.gather(1, idx)
            w = w / (w.sum(-1, keepdim=True) + 1e-20) * 2.0
        else:
            w, idx = logits.softmax(-1).topk(2, -1)

        def mlp(pre, v):
            return F.linear(F.silu(F.linear(v, state[pre + "gate_proj.weight"])) * F.linear(v, state[pre + "up_proj.weight"]),
                            state[pre + "down_proj.weight"])

        ref = mlp(p + "shared_experts.", x)
        for n in range(5):
            for k in range(2):
                ref[n] += w[n, k] * mlp(f"{p}experts.{int(idx[n, k])}.", x[n])
        with torch.no_grad():
            got = model.language.model.layers[1].mlp(x[None])[0]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


# ---- vision, projector, layout -----------------------------------------------------------------------
def test_unfold_is_pixel_unshuffle_with_zero_pad():
    x = torch.randn(1, 729, 5)
    out = unfold_2x2(x)
    assert out.shape == (1, 196, 20)
    grid = x.view(27, 27, 5)
    for i, j, c, di, dj in [(0, 0, 0, 0, 0), (3, 7, 4, 1, 0), (13, 2, 2, 0, 1), (6, 13, 1, 1, 1), (13, 13, 3, 0, 0)]:
        r, col = 2 * i + di, 2 * j + dj
        want = grid[r, col, c] if r < 27 and col < 27 else 0.0
        assert out[0, i * 14 + j, c * 4 + di * 2 + dj] == want
    assert torch.all(out[0, 13 * 14 :, 2::4] == 0) and torch.all(out[0, 13::14, 1::2] == 0)  # 28th row / col


def test_vision_tower_matches_naive_attention(load):
    vit = load("tiny").vision
    px = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    x = vit.patch_embed.proj(px).flatten(2).transpose(1, 2) + vit.pos_embed
    for blk in vit.blocks:
        h = F.layer_norm(x, (48,), blk.norm1.weight, blk.norm1.bias, 1e-6)
        q, k, v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).split(48, -1)
        heads = []
        for hd in range(4):
            sl = slice(12 * hd, 12 * hd + 12)
            att = (q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(12)).softmax(-1)
            heads.append(att @ v[..., sl])
        x = x + blk.attn.proj(torch.cat(heads, -1))
        h = blk.mlp.fc1(F.layer_norm(x, (48,), blk.norm2.weight, blk.norm2.bias, 1e-6))
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        x = x + blk.mlp.fc2(h)
    ref = F.layer_norm(x, (48,), vit.norm.weight, vit.norm.bias, 1e-6)
    with torch.no_grad():
        got = vit(px)
    assert got.shape == (2, 729, 48)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_layout_markers_and_shapes(load, proc, monkeypatch):
    model = load("tiny")
    batch = proc(prompts="<image>\nWhere?", images=[_img(768, 384)])
    tw, th = batch["images_spatial_crop"][0, 0].tolist()
    assert (tw, th) == (2, 1)
    with torch.no_grad():
        feats = model.encode_tiles(batch["images"][0, : 1 + tw * th])
    assert feats.shape == (3, 196, 64)

    def markers(tiles):
        out = torch.zeros(tiles.shape[0], 196, 64)
        out[:, :, 0] = torch.arange(tiles.shape[0])[:, None] + 1.0
        out[:, :, 1] = torch.arange(196)[None, :] + 1.0
        return out

    monkeypatch.setattr(model, "encode_tiles", markers)
    with torch.no_grad():
        emb = model.prepare_inputs_embeds(batch["input_ids"], batch["images"], batch["images_seq_mask"],
                                          batch["images_spatial_crop"])
    assert emb.shape == (1, batch["input_ids"].shape[1], 64)
    a = int(batch["images_seq_mask"][0].nonzero()[0])
    span = model.image_layout(batch["images_seq_mask"], batch["images_spatial_crop"])[0][0]
    assert (span.start, span.n_w, span.n_h, span.length) == (a, 2, 1, 617)
    nl, sep = model.image_newline.detach(), model.view_seperator.detach()
    for i in range(14):
        assert torch.equal(emb[0, a + 15 * i + 14], nl)
        assert emb[0, a + 15 * i + 3, :2].tolist() == [1.0, 14 * i + 3 + 1.0]  # global tile, token (i, 3)
    assert torch.equal(emb[0, a + 210], sep) and span.separator == a + 210
    width = 14 * tw + 1
    for r in range(14 * th):
        assert torch.equal(emb[0, a + 211 + r * width + 14 * tw], nl)
    for tile, t in [(0, 0), (0, 195), (1, 0), (1, 14 * 5 + 9), (1, 195)]:
        rr, cc = (tile // tw) * 14 + t // 14, (tile % tw) * 14 + t % 14
        pos = a + 211 + rr * width + cc
        assert emb[0, pos, :2].tolist() == [tile + 2.0, t + 1.0]
        assert span.local_tile_token(tile, t) == pos
    assert sorted(span.newline_positions()) == sorted(
        [a + 15 * i + 14 for i in range(14)] + [a + 211 + r * width + 28 for r in range(14)])


# ---- generation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", ["tiny", "small", "base"])
def test_cached_greedy_equals_uncached_oracle(load, proc, flavour):
    model = load(flavour, "eager" if flavour == "small" else "sdpa")
    batch = proc(prompts="<image>\nWhat is in the picture?", images=[_img(300, 200)])
    cached = model.generate(**batch, max_new_tokens=4, use_cache=True)
    oracle = model.generate(**batch, max_new_tokens=4, use_cache=False)
    assert cached.shape[1] > batch["input_ids"].shape[1]
    assert torch.equal(cached, oracle)


def test_left_padded_row_equals_row_alone_and_text_only(load, proc):
    model = load("small")
    prompts, images = ["<image>\nDescribe the image.", "Which option is correct?"], [[_img(380, 300)], []]
    batch = proc(prompts=prompts, images=images)
    both = model.generate(**batch, max_new_tokens=4)
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
    t = batch["input_ids"].shape[1]
    for row in range(2):
        alone = proc(prompts=prompts[row], images=images[row])
        single = model.generate(**alone, max_new_tokens=4)
        with torch.no_grad():
            torch.testing.assert_close(model(**alone).logits[0, -1], logits[row], atol=1e-4, rtol=1e-4)
        new = single[0, alone["input_ids"].shape[1]:]
        assert torch.equal(both[row, t : t + len(new)], new)


def test_generation_stops_at_eos_and_sampling(load, proc):
    model = load("base")
    batch = proc(prompts="Hello there", images=[])
    t = batch["input_ids"].shape[1]
    greedy = model.generate(**batch, max_new_tokens=3)
    first = int(greedy[0, t])
    stopped = model.generate(**batch, max_new_tokens=3, eos_token_id=first)
    assert stopped.shape[1] == t + 1
    top1 = model.generate(**batch, max_new_tokens=3, do_sample=True, top_k=1)
    assert torch.equal(top1, greedy)
    s1 = model.generate(**batch, max_new_tokens=3, do_sample=True, temperature=0.7, top_p=0.9,
                        generator=torch.Generator().manual_seed(3))
    s2 = model.generate(**batch, max_new_tokens=3, do_sample=True, temperature=0.7, top_p=0.9,
                        generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2)


def test_hooks_see_layout_and_mla_cache_is_latent(load, proc):
    """What the pruning adapter relies on: kwargs at prefill, layer kwargs, MLA latent cache, kv_b_proj values."""
    model = load("small")
    seen, layer_kwargs, kvb = [], [], []
    h1 = model.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw)), with_kwargs=True)
    h2 = model.decoder_layers[1].register_forward_pre_hook(lambda m, a, kw: layer_kwargs.append(dict(kw)),
                                                           with_kwargs=True)
    h3 = model.decoder_layers[1].self_attn.kv_b_proj.register_forward_hook(lambda m, i, o: kvb.append(o))
    try:
        batch = proc(prompts="<image>\nWhere?", images=[_img(384, 384)])
        model.generate(**batch, max_new_tokens=2)
    finally:
        h1.remove(), h2.remove(), h3.remove()
    t = batch["input_ids"].shape[1]
    assert seen[0]["images_seq_mask"] is not None and seen[0]["images_spatial_crop"].tolist() == [[[1, 1]]]
    assert seen[1].get("images_seq_mask") is None and seen[1]["input_ids"].shape == (1, 1)
    assert model.last_image_layout[0][0].length == 421
    first = layer_kwargs[0]
    assert {"position_embeddings", "attention_mask", "position_ids", "past_key_values"} <= set(first)
    assert torch.equal(first["position_ids"], torch.arange(t)[None])
    cache = first["past_key_values"]
    assert type(cache).__name__ == "DynamicCache"
    cfg = model.config
    assert cache.layers[1].keys.shape == (1, 1, t + 1, cfg.kv_lora_rank)  # normalised latent
    assert cache.layers[1].values.shape == (1, 1, t + 1, cfg.qk_rope_head_dim)  # rotated shared k_pe
    heads, nope, vdim = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
    assert kvb[0].shape == (1, 1, t, heads * (nope + vdim))
    values = kvb[0].view(1, t, heads, nope + vdim)[..., nope:]
    assert values.shape == (1, t, heads, vdim)


# ---- parity script (the parts that run without the official package) --------------------------------
def test_compare_script_our_side_and_report(ckpts, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("cmp_dsvl2", REPO / "scripts" / "compare_deepseek_vl2_official.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    image = tmp_path / "img.png"
    _img(500, 300).save(image)
    out = tmp_path / "ours.pt"
    assert mod.main(["ours", "--model", str(ckpts["tiny"]), "--image", str(image), "--out", str(out),
                     "--dtype", "float32", "--max-new-tokens", "2"]) == 0
    rec = torch.load(out)
    assert rec["text_logits"].shape[0] == int((~rec["images_seq_mask"][0]).sum())
    stats = mod.compare(rec, rec)
    assert stats["max_abs_logit_diff"] == 0 and stats["top1_agreement"] == 1.0 and stats["greedy_equal"]
    other = dict(rec, text_logits=rec["text_logits"] + 0.5)
    assert abs(mod.compare(rec, other)["max_abs_logit_diff"] - 0.5) < 1e-6
    assert mod.main(["compare", str(out), str(out)]) == 0
    assert "top-1 agreement" in capsys.readouterr().out
