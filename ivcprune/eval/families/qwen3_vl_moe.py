"""Qwen3-VL MoE (30B-A3B): the dense family's prompts, parser and frame; only the model class differs."""

from __future__ import annotations

from ivcprune.eval.families.qwen3_vl import Qwen3VL


class Qwen3VLMoe(Qwen3VL):
    name = "qwen3_vl_moe"


FAMILY = Qwen3VLMoe()
