"""Batched generation on the real wrappers (issue 13): batch 8 answers every row exactly as batch 1 does.

Every family on its tiny random checkpoint, unpruned and pruned, float32 greedy on CPU, with grounding, MCQ and
Y/N prompts of the family's own style and images of different sizes (InternVL: different tile counts; DeepSeek-VL2:
different tilings), so the batch is left-padded and, for pruning, every sample keeps a different number of tokens.
A second end-of-answer id is chosen so that rows finish at different steps (random weights never emit the real
one): the finished rows go on receiving padding in the batch and must still decode as they do alone.
"""

from __future__ import annotations

import pytest

from ivcprune.eval.batching import RowOutput, run_batch
from ivcprune.eval.datasets.grounding import grounding_text
from ivcprune.eval.datasets.mcq import mcq_text
from ivcprune.eval.datasets.yorn import yorn_text
from ivcprune.eval.registry import resolve
from ivcprune.eval.wrappers import load_model
from ivcprune.testing import make_image, tiny_checkpoint

ROW_KEYS = ("image_tokens", "kept_tokens", "kv_bytes_full", "kv_bytes_kept", "new_tokens")
SIZES = [(200, 150), (112, 112), (400, 110), (90, 160), (256, 64), (150, 150), (64, 48), (300, 220)]
QWEN3_PIXELS = {"min_pixels": 4 * 32 * 32, "max_pixels": 64 * 32 * 32}
FAMILIES = {  # family -> (unpruned registry name, pruned registry name, K, registry overrides)
    "qwen2_5_vl": ("Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL-7B-Instruct_IVCP", 2, {}),
    "qwen2_vl": ("Qwen2-VL-7B-Instruct", "Qwen2-VL-7B-Instruct_IVCP", 2, {}),
    "qwen3_vl": ("Qwen3-VL-8B-Instruct", "Qwen3-VL-8B-Instruct_IVCP", 2, QWEN3_PIXELS),
    "qwen3_vl_moe": ("Qwen3-VL-30B-A3B-Instruct", "Qwen3-VL-30B-A3B-Instruct_IVCP", 1, QWEN3_PIXELS),
    "llava": ("llava_v1.5_7b", "llava_v1.5_7b_IVCP", 2, {}),
    "internvl": ("InternVL3-8B", "InternVL3-8B_ivcp", 2, {}),
    "deepseek_vl2": ("deepseek_vl2_tiny", "deepseek_vl2_tiny_ivcp", 2, {}),
}


def prompts(family: str) -> list[list]:
    """8 rows: grounding, MCQ and Y/N texts in the family's prompt style, each with its own image."""
    mcq = {"question": "Which shape is red?", "A": "the circle", "B": "the square", "C": "the triangle"}
    hint = dict(mcq, hint="Look at the colours.", question="What is on the left?", D="nothing")
    texts = [grounding_text("the red circle", family), mcq_text(mcq, family),
             yorn_text({"question": "Is there a blue square?"}, family, "POPE"),
             grounding_text("a small green triangle at the top", family), mcq_text(hint, family),
             yorn_text({"question": "Is the circle above the square?"}, family, "MME"),
             grounding_text("it", family), yorn_text({"question": "Any shapes?"}, family, "HallusionBench")]
    return [[("image", make_image(w, h, seed=k)), ("text", t)] for k, ((w, h), t) in enumerate(zip(SIZES, texts))]


def _checkpoint(family: str, tmp_path_factory) -> str:
    if family == "deepseek_vl2":
        from ivcprune.models.deepseek_vl2 import make_tiny_deepseek_vl2

        return str(make_tiny_deepseek_vl2(tmp_path_factory.mktemp("dsvl2_batch") / "tiny", "tiny", seed=2))
    return str(tiny_checkpoint(family))


def _stop_early(model, outputs: list[RowOutput]) -> int:
    """Make a token that some rows emit early an end-of-answer id, so that rows end at different steps."""
    import collections

    firsts = collections.Counter()
    for out in outputs:
        firsts.update(set(out.tokens[1:4]))
    token = next(t for t, n in firsts.most_common() if n < len(outputs))
    eos = sorted(model.eos_ids | {int(token)})
    if getattr(model.model, "generation_config", None) is not None:
        model.model.generation_config.eos_token_id = eos
    else:
        model.model.config.eos_token_id = eos
    return int(token)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batch_of_8_equals_batch_of_1_row_for_row(family, tmp_path_factory):
    check_batch_equals_alone(family, _checkpoint(family, tmp_path_factory), *FAMILIES[family])


def test_deepseek_vl2_small_mla_moe_batch_equals_alone(tmp_path_factory):
    from ivcprune.models.deepseek_vl2 import make_tiny_deepseek_vl2

    path = str(make_tiny_deepseek_vl2(tmp_path_factory.mktemp("dsvl2_small_batch") / "small", "small", seed=2))
    check_batch_equals_alone("deepseek_vl2", path, "deepseek_vl2_small", "deepseek_vl2_small_ivcp", 2, {})


def check_batch_equals_alone(family: str, path: str, unpruned: str, pruned_name: str, layer: int, sets: dict):
    batch = prompts(family)
    for name in (unpruned, pruned_name):
        pruned = name == pruned_name
        model = load_model(resolve(name, model_path=path, layer=layer if pruned else None,
                                   sets={"generation.max_new_tokens": 10, **sets}))
        _stop_early(model, [model.generate_batch([p])[0] for p in batch[:4]])
        alone = [model.generate_batch([p])[0] for p in batch]
        together = run_batch(model, batch, None)
        assert all(o.error is None for o in alone + together), [o.error for o in alone + together]
        assert [o.tokens for o in together] == [o.tokens for o in alone], name
        assert [o.text for o in together] == [o.text for o in alone], name
        for a, t in zip(alone, together):
            assert {k: t.stats[k] for k in ROW_KEYS} == {k: a.stats[k] for k in ROW_KEYS}, name
            assert t.stats["batch_size"] == 8 and a.stats.get("batch_size") is None
        new = [o.stats["new_tokens"] for o in alone]
        assert min(new) < max(new) == 10, (name, new)  # rows did finish at different steps
        assert together[0].stats["decode_steps"] == 10
        image_tokens = [o.stats["image_tokens"] for o in alone]
        assert len(set(image_tokens)) > 1 or family == "llava", image_tokens  # padded: different lengths
        if pruned:
            assert all(o.stats["kept_tokens"] < o.stats["image_tokens"] for o in alone), name
        else:
            assert all(o.stats["kept_tokens"] == o.stats["image_tokens"] for o in alone), name


def test_a_row_the_processor_rejects_is_a_miss_and_its_batch_mates_run():
    """An image Qwen's resize refuses (aspect ratio over 200) fails alone, inside the batch, without a retry."""
    model = load_model(resolve("Qwen2.5-VL-7B-Instruct_IVCP", model_path=str(tiny_checkpoint("qwen2_5_vl")),
                               layer=2, sets={"generation.max_new_tokens": 4}))
    batch = prompts("qwen2_5_vl")[:4]
    alone = [model.generate_batch([p])[0] for p in batch]
    batch.insert(2, [("image", make_image(4000, 14, seed=1)), ("text", "Is it long?")])
    calls = []
    real = model.run_generate
    model.run_generate = lambda inputs, timer: calls.append(inputs["input_ids"].shape[0]) or real(inputs, timer)
    out = run_batch(model, batch, None)
    assert calls == [4]  # one generate call for the 4 good rows
    assert out[2].error is not None and out[2].text is None
    assert [o.text for k, o in enumerate(out) if k != 2] == [a.text for a in alone]
    with pytest.raises(type(out[2].error)):
        model.generate(batch[2])


def test_text_only_rows_share_a_batch_with_image_rows():
    model = load_model(resolve("Qwen2.5-VL-7B-Instruct_IVCP", model_path=str(tiny_checkpoint("qwen2_5_vl")),
                               layer=2, sets={"generation.max_new_tokens": 6}))
    batch = prompts("qwen2_5_vl")[:3]
    batch.insert(1, [("text", "Describe a red circle.")])
    alone = [model.generate_batch([p])[0] for p in batch]
    together = model.generate_batch(batch)
    assert [o.tokens for o in together] == [o.tokens for o in alone]
    assert together[1].stats["image_tokens"] == together[1].stats["kept_tokens"] == 0


def test_generate_failure_retries_the_batch_row_by_row_once():
    """An exception from generate itself (out of memory, say) is retried one row at a time; a row that fails alone
    too is the only miss."""
    model = load_model(resolve("llava_v1.5_7b", model_path=str(tiny_checkpoint("llava")),
                               sets={"generation.max_new_tokens": 4}))
    batch = prompts("llava")[:4]
    alone = [model.generate_batch([p])[0] for p in batch]
    real, calls = model.run_generate, []

    def flaky(inputs, timer):
        rows = inputs["input_ids"].shape[0]
        calls.append(rows)
        text = model.tokenizer.decode(inputs["input_ids"][0])
        if rows > 1 or "Any shapes" in text or "blue square" in text:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(inputs, timer)

    model.run_generate = flaky
    out = run_batch(model, batch, None)
    assert calls == [4, 1, 1, 1, 1]
    assert [o.error is None for o in out] == [True, True, False, True]
    assert "out of memory" in str(out[2].error)
    assert [o.text for o in out if o.error is None] == [alone[k].text for k in (0, 1, 3)]
    assert all(o.stats["batch_size"] == 1 for o in out if o.error is None)
