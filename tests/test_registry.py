"""Model registry: official names, unpruned entries, aliases, checkpoint precedence, errors (docs/HARNESS.md §8)."""

from __future__ import annotations

import pytest

from ivcprune.eval import registry as reg
from ivcprune.eval.wrappers import NotSupportedYet, load_model

OFFICIAL = ["Qwen2.5-VL-7B-Instruct_IVCP", "Qwen2.5-VL-7B-Instruct_Grounding_IVCP", "Qwen2.5-VL-3B-Instruct_IVCP",
            "Qwen2.5-VL-3B-Instruct_Grounding_IVCP", "Qwen2-VL-7B-Instruct_IVCP", "Qwen2-VL-7B-Instruct_Grounding_IVCP",
            "llava_v1.5_7b_IVCP", "InternVL3-8B_ivcp", "InternVL2_5-8B_ivcp", "deepseek_vl2_small_ivcp",
            "deepseek_vl2_tiny_ivcp", "deepseek_vl2_ivcp"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("QWEN25VL_7B_PATH", "QWEN25VL_3B_PATH", "IVCP_MODEL_CONFIGS"):
        monkeypatch.delenv(var, raising=False)


def test_official_names_and_unpruned_entries():
    names = reg.load_registry()
    for name in OFFICIAL:
        assert name in names and names[name]["pruning"], name
        base = name[:-5]
        assert base in names and names[base]["pruning"] is None, base
        same = {k: v for k, v in names[base].items() if k != "pruning"}
        assert same == {k: v for k, v in names[name].items() if k != "pruning"}
    q7 = reg.resolve("Qwen2.5-VL-7B-Instruct_Grounding_IVCP")
    assert (q7.family, q7.checkpoint, q7.pruning["layer"], q7.pruning["retention"]) == \
        ("qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct", 16, 0.5)
    assert (q7.get("min_pixels"), q7.get("max_pixels"), q7.get("generation")["max_new_tokens"]) == \
        (4 * 28 * 28, 16384 * 28 * 28, 512)
    assert reg.resolve("Qwen2.5-VL-3B-Instruct_IVCP").pruning["layer"] == 22
    assert reg.resolve("deepseek_vl2_small_ivcp").pruning["layer"] == 17


def test_checkpoint_precedence(monkeypatch, tmp_path):
    assert reg.resolve("Qwen2.5-VL-7B-Instruct").checkpoint_source == "registry"
    monkeypatch.setenv("QWEN25VL_7B_PATH", "/env/path")
    e = reg.resolve("Qwen2.5-VL-7B-Instruct")
    assert (e.checkpoint, e.checkpoint_source) == ("/env/path", "$QWEN25VL_7B_PATH")
    e = reg.resolve("Qwen2.5-VL-7B-Instruct", model_path=str(tmp_path))
    assert (e.checkpoint, e.checkpoint_source) == (str(tmp_path), "--model-path")


def test_overrides_name_and_fingerprint():
    e = reg.resolve("Qwen2.5-VL-7B-Instruct_IVCP", retention=0.25, layer=8, sets={"max_pixels": 5005056})
    assert e.name == "Qwen2.5-VL-7B-Instruct_IVCP_r0.25_k8"
    assert (e.pruning["retention"], e.pruning["layer"], e.get("max_pixels")) == (0.25, 8, 5005056)
    base = reg.resolve("Qwen2.5-VL-7B-Instruct_IVCP")
    fp = lambda x: reg.fingerprint(x, prompt_style="qwen", image_mode="vlmeval", dataset_sig="s", major=1)  # noqa: E731
    assert fp(e) != fp(base) and fp(base) == fp(reg.resolve("Qwen2.5-VL-7B-Instruct_IVCP"))
    with pytest.raises(reg.RegistryError, match="unpruned entry"):
        reg.resolve("Qwen2.5-VL-7B-Instruct", retention=0.3)
    with pytest.raises(reg.RegistryError, match="unknown registry key"):
        reg.resolve("Qwen2.5-VL-7B-Instruct", sets={"max_pixel": 1})
    assert reg.parse_set(["generation.max_new_tokens=16", "box_scale=1000"]) == \
        {"generation.max_new_tokens": 16, "box_scale": 1000}


def test_unknown_name_lists_nearest():
    with pytest.raises(reg.RegistryError) as err:
        reg.resolve("Qwen2.5-VL-7B-Instruct_IVPC")
    assert "Qwen2.5-VL-7B-Instruct_IVCP" in str(err.value) and "ivcp list models" in str(err.value)


def _unwrapped_family(tmp_path) -> str:
    """A registry file for a family with no wrapper (every built-in family has one)."""
    f = tmp_path / "future.yaml"
    f.write_text("family: future_vl\nmodels:\n  future_vl_ivcp:\n    checkpoint: /nowhere\n"
                 "    pruning: {method: ivcp, layer: 4, retention: 0.5}\n")
    return str(f)


def test_family_without_wrapper_is_not_supported_yet(tmp_path):
    entry = reg.resolve("future_vl_ivcp", extra_configs=[_unwrapped_family(tmp_path)])
    with pytest.raises(NotSupportedYet, match="not supported"):
        load_model(entry)


def test_extra_config_file_and_env(tmp_path, monkeypatch):
    f = tmp_path / "mine.yaml"
    f.write_text("family: qwen2_5_vl\nmodels:\n  My-Qwen_IVCP:\n    checkpoint: /w\n    pruning: {method: ivcp, "
                 "layer: 4, retention: 0.3}\n")
    assert "My-Qwen" in reg.load_registry([str(f)])
    monkeypatch.setenv("IVCP_MODEL_CONFIGS", str(f))
    assert reg.resolve("My-Qwen_IVCP").pruning == {"method": "ivcp", "layer": 4, "retention": 0.3}
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: x\nmodels:\n  A:\n    chekpoint: y\n")
    with pytest.raises(reg.RegistryError, match="unknown keys"):
        reg.load_registry([str(bad)])


def test_make_method_from_registry_block():
    import ivcprune

    m = reg.make_method({"method": "ivcp", "layer": 16, "retention": 0.5})
    assert isinstance(m, ivcprune.IVCPrune) and m.layer == 16 and m.retention == 0.5
    assert reg.make_method(None) is None
    with pytest.raises(reg.RegistryError, match="unknown pruning method"):
        reg.make_method({"method": "nope"})


def test_list_cli(capsys, tmp_path):
    assert reg.cli_main(["models", "--model-config", _unwrapped_family(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Qwen2.5-VL-7B-Instruct_Grounding_IVCP" in out and "not supported yet" in out
    assert reg.cli_main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "RefCOCO_testA_for_qwen25vl" in out and "MMBench_DEV_EN_V11" in out


def test_every_ivcp_entry_registers_its_comparison_method_variants():
    from ivcprune.eval.registry import make_method as registry_method
    from ivcprune.methods.fastv import FastV
    from ivcprune.methods.with_ivc import WithIVC

    fastv = reg.resolve("Qwen2.5-VL-7B-Instruct_FastV")
    assert fastv.pruning == {"method": "fastv", "layer": 16, "retention": 0.5}
    assert isinstance(registry_method(fastv.pruning), FastV)
    grid_ivc = reg.resolve("InternVL3-8B_Grid_IVC", retention=0.25)
    assert grid_ivc.name == "InternVL3-8B_Grid_IVC_r0.25"
    method = registry_method(grid_ivc.pruning)
    assert isinstance(method, WithIVC) and method.method.retention == 0.25


def test_retention_on_an_unpruned_entry_is_refused_in_plain_words():
    from ivcprune.eval.registry import RegistryError, resolve

    with pytest.raises(RegistryError, match=r"'Qwen2.5-VL-7B-Instruct' is an unpruned entry$"):
        resolve("Qwen2.5-VL-7B-Instruct", retention=0.5)
