"""Retention sweeps: planning (variant entries, output names, shared unpruned run) and a real run on the tiny demo."""

from __future__ import annotations

import argparse

import pytest

from ivcprune.eval import sweep
from ivcprune.eval.registry import load_registry, make_method
from ivcprune.methods.with_ivc import WithIVC

MODEL = "Qwen2.5-VL-7B-Instruct_Grounding"
DATASET = "RefCOCO_testA_for_qwen25vl"


def test_wants_sweep_only_for_lists_or_methods():
    assert sweep.wants_sweep(["--model", "m", "--retention", "0.25,0.5"])
    assert sweep.wants_sweep(["--retention=0.25,1.0"])
    assert sweep.wants_sweep(["--method", "fastv"])
    assert not sweep.wants_sweep(["--model", "m", "--retention", "0.5", "--data", "d"])


def _args(tmp_path, **kw):
    base = dict(model=[MODEL], data=[DATASET], method="ivcp,fastv+ivc", retention="0.5,1.0", layer=2,
                work_dir=str(tmp_path), limit=None, model_config=[], model_path=None, metric=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_plan_uses_registry_variants_and_runner_calls(tmp_path):
    runs = sweep.plan(_args(tmp_path), [0.5, 1.0], ["ivcp", "fastv+ivc"])
    reg = load_registry()
    assert reg[f"{MODEL}_FastV_IVC"]["pruning"] == {"method": "fastv+ivc", "layer": 16, "retention": 0.5}
    by = {(r.method, r.retention): r for r in runs}
    assert by[("ivcp", 0.5)].out_name == f"{MODEL}_IVCP_r0.5_k2"
    assert by[("fastv+ivc", 0.5)].out_name == f"{MODEL}_FastV_IVC_r0.5_k2"
    assert by[("ivcp", 1.0)].argv == by[("fastv+ivc", 1.0)].argv  # one shared unpruned run
    assert by[("ivcp", 1.0)].out_name == MODEL and "--layer" not in by[("ivcp", 1.0)].argv
    # the registry builds the method through the shared factory
    method = make_method(reg[f"{MODEL}_FastV_IVC"]["pruning"])
    assert isinstance(method, WithIVC) and method.layer == 16 and method.label() == "fastv+ivc"


def test_bad_lists_are_usage_errors(tmp_path, capsys):
    assert sweep.cli_main(["--model", MODEL, "--data", DATASET, "--method", "nosuch", "--retention", "0.5",
                           "--work-dir", str(tmp_path)]) == 2
    assert sweep.cli_main(["--model", "nope", "--data", DATASET, "--retention", "0.5,1", "--work-dir",
                           str(tmp_path)]) == 2


def test_sweep_runs_the_tiny_demo_and_writes_table_and_plot(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from ivcprune.eval.demo_data import build_demo_lmudata
    from ivcprune.testing import tiny_checkpoint

    data = tmp_path / "LMUData"
    build_demo_lmudata(data, n=3, seed=0)
    monkeypatch.setenv("LMUData", str(data))
    ckpt = tiny_checkpoint("qwen2_5_vl")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from ivcprune.eval import commands

        # through `ivcp run`, as users call it: --method / a retention list dispatch to the sweep
        rc = commands.run(["--model", MODEL, "--data", DATASET, "--method", "ivcp,grid", "--retention", "0.5,1.0",
                             "--layer", "2", "--work-dir", str(tmp_path / "out"), "--model-path", str(ckpt),
                             "--set", "generation.max_new_tokens=4", "--warmup", "0"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    out = tmp_path / "out" / "sweep"
    rows = (out / "sweep.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # 2 methods x 2 retentions
    assert "n/a" not in (out / "sweep.md").read_text()
    assert (out / f"{MODEL}_{DATASET}_sweep.png").stat().st_size > 0
    assert (tmp_path / "out" / f"{MODEL}_Grid_r0.5_k2" / f"{MODEL}_Grid_r0.5_k2_{DATASET}_score.json").is_file()


def test_layer_goes_only_to_methods_that_select_at_one_layer(tmp_path):
    """--layer is K of single-layer methods; K = 0 (divprune) and multi-stage (pdrop) keep their own placement."""
    runs = sweep.plan(_args(tmp_path), [0.5], ["dart", "divprune", "pdrop+ivc"])
    by = {r.method: r for r in runs}
    assert "--layer" in by["dart"].argv and by["dart"].out_name.endswith("_k2")
    for name in ("divprune", "pdrop+ivc"):
        assert "--layer" not in by[name].argv and not by[name].out_name.endswith("_k2"), by[name]
