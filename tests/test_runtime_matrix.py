"""The runtime invariants of docs/ALGORITHM.md §7 for every family x registered method x attention backend.

Families: the transformers-native ones (Qwen2.5-VL, Qwen2-VL, Qwen3-VL dense and MoE, LLaVA-1.5, InternVL) on tiny
random checkpoints, float32 on CPU. DeepSeek-VL2 has its own generate loop and runs the same invariants, also for
every method, in test_runtime_deepseek_vl2.py. A newly registered method joins this matrix by registering.
Tolerances: bit-exact where the design promises it (identity at retention 1.0, cut cache content, positions,
text-only); 1e-5 where two computations differ only in summation order (oracle, batch vs alone, hand-written decode).
"""

from __future__ import annotations

import pytest

import ivcprune
from ivcprune.methods import method_names
from ivcprune.testing import make_image
import invariants as inv
from cases import K, OTHER_PROMPT, PROMPTS, STEPS, case

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "llava", "internvl")
MATRIX = [(f, m, a) for f in FAMILIES for m in method_names() for a in ("eager", "sdpa")]
# methods whose retention 1.0 keeps every token; the one ablation without a budget (ivc_removed) is not among them


def maker(name: str):
    """retention -> method; None is the method's default pruning (0.5 where the family has no default budget).

    Methods that select at one layer do so at K; the others where they are defined to (pre-LLM methods at K = 0,
    multi-stage methods at their default schedule, 1 < 2 < 3 of the 4 tiny layers)."""
    layer = K if ivcprune.make_method(name).selects_at == "layer" else None

    def make(retention=None):
        if retention is None and name != "ivcp":
            retention = 0.5
        return ivcprune.make_method(name, layer, retention)

    return make


def first_layer(model, make) -> int:
    """K1: the layer the method's (first) selection runs at on this model."""
    return make(None).schedule(ivcprune.models.get_adapter(model))[0]


BUDGETED = {m for m in method_names() if maker(m)(1.0).is_identity()}


_INPUTS: dict = {}


def _setup(param):
    family, name, attn = param
    c = case(family)
    model, proc = c.load(attn)
    if family not in _INPUTS:  # the processor's output is the same for every method and backend: built once
        _INPUTS[family] = c.inputs(proc, make_image(*c.image_size, seed=1), PROMPTS[family])
    return c, model, proc, _INPUTS[family], maker(name), name


@pytest.fixture(params=MATRIX, ids=[f"{f}-{m}-{a}" for f, m, a in MATRIX])
def setup(request):
    return _setup(request.param)


def test_identity_at_retention_one_is_bit_exact(setup):
    c, model, proc, inputs, make, name = setup
    if name not in BUDGETED:
        assert not make(1.0).is_identity()  # an ablation without a budget prunes at any retention
        return
    inv.check_identity(model, inputs, make, STEPS)


def test_every_method_but_the_ablation_has_an_exact_identity():
    assert set(method_names()) - BUDGETED == {"ivc_removed"}


def test_cache_lengths_and_cut_content(setup):
    c, model, proc, inputs, make, _ = setup
    sel = inv.check_cache(model, inputs, make, first_layer(model, make), STEPS)
    assert sel.pruned and sel.kept_image_tokens[0] < sel.image_tokens[0]


def test_decode_positions_are_original(setup):
    c, model, proc, inputs, make, _ = setup
    inv.check_positions(model, inputs, make, first_layer(model, make), STEPS)


# decode-path checks that do not depend on what was kept: one method per capture kind (values, attention)
# Checks of runtime paths that do not depend on which tokens a method keeps run once per path: values (ivcp),
# an attention tap (fastv), hidden states (dart), selection before the first layer (divprune), stages (pdrop).
RUNTIME_PATHS = [m for m in ("ivcp", "fastv", "dart", "divprune", "pdrop") if m in method_names()]
PATH_MATRIX = [(f, m, a) for f in FAMILIES for m in RUNTIME_PATHS for a in ("eager", "sdpa")]


@pytest.fixture(params=PATH_MATRIX, ids=[f"{f}-{m}-{a}" for f, m, a in PATH_MATRIX])
def path_setup(request):
    return _setup(request.param)


def test_hand_written_decode_loop_gets_original_positions(path_setup):
    c, model, proc, inputs, make, name = path_setup
    inv.check_handwritten_decode(model, inputs, make, STEPS)


def test_cached_decode_equals_oracle(setup):
    c, model, proc, inputs, make, _ = setup
    inv.check_oracle(c, model, inputs, make, first_layer(model, make), STEPS)


def test_padded_batch_equals_each_sample_alone(setup):
    c, model, proc, inputs, make, name = setup
    images = [make_image(*c.image_size, seed=1), make_image(*c.other_size, seed=2)]
    texts = [PROMPTS[c.family], OTHER_PROMPT]
    inv.check_padded_batch(c, model, proc, make, STEPS, images, texts)


def test_text_only_prompt_is_untouched(path_setup):
    c, model, proc, inputs, make, _ = path_setup
    inv.check_text_only(c, model, proc, make, STEPS)


def test_use_cache_false_returns_kept_rows(path_setup):
    c, model, proc, inputs, make, name = path_setup
    inv.check_use_cache_false(model, inputs, make)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", method_names())
def test_kept_sets_equal_across_backends_and_threads(family, name):
    c = case(family)
    inputs_for = lambda proc: c.inputs(proc, make_image(*c.image_size, seed=1), PROMPTS[family])  # noqa: E731
    # eager on one thread against sdpa on two: a backend or a thread count that changed a kept set would show
    kept = inv.kept_sets_across(c, maker(name), inputs_for, attns=("eager",), threads=(1,))
    kept += inv.kept_sets_across(c, maker(name), inputs_for, attns=("sdpa",), threads=(2,))
    assert len(kept) == 2 and kept[0] == kept[1]
