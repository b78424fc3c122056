"""Per-family defaults of IVC-Prune (docs/ALGORITHM.md §4.1); the comparison methods share K and the budget.

A family missing from the table runs with ``GENERIC``: BUDGET(0.5), 10 % IVC per group, K = floor(N_L / 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class IVCPDefaults:
    """What IVC-Prune does on one family unless the method overrides it."""

    family: str
    policy: str = "budget"  # "budget" | "union" | "thumb_budget" | "global_local" (ivcprune.methods.ivcp.policies)
    retention: float | None = 0.5  # rho; None: no budget (UNION); a float on a UNION family switches to BUDGET(rho)
    ivc_fraction: float = 0.10  # f_cos = f_sin per IVC group
    ivc_fraction_by_role: dict = field(default_factory=dict)  # other fractions for groups of a role
    seed_fraction: float = 0.01
    query_offset: int = 2  # delta: queries start at E + delta
    fg_fraction: float = 0.2  # UNION only
    keys: str = "view"  # softmax keys of the affinity: "view" (the scored view) or "prompt" (all valid tokens)
    ivc_rule: str = "reference"  # "reference": mean over every axis and frequency; "applied": each frequency with
    # the axis that rotates it (adapter.rotary_axes(); docs/ALGORITHM.md §2 F2)
    default_layers: tuple[tuple[int, int], ...] = ()  # (num_layers, K) pairs of known checkpoints

    def default_layer(self, num_layers: int) -> int:
        """K of a known checkpoint depth, else floor(N_L / 2) (untuned)."""
        for layers, k in self.default_layers:
            if layers == num_layers:
                return k
        return max(1, num_layers // 2)


# Qwen3-VL (dense and MoE): K at the relative depth of Qwen2.5-VL-7B's 16 of 28 layers, round(N_L * 16 / 28),
# untuned: 2B (28 layers) 16, 4B and 8B (36) 21, 30B-A3B (48) 27, 32B (64) 37. Same BUDGET(0.5) and fractions.
QWEN3_LAYERS = ((28, 16), (36, 21), (48, 27), (64, 37))
QWEN = IVCPDefaults(family="qwen2_5_vl", default_layers=((28, 16), (36, 22)))  # 7B: K=16, 3B: K=22
FAMILY_DEFAULTS: dict[str, IVCPDefaults] = {
    "qwen2_5_vl": QWEN,
    "qwen2_vl": IVCPDefaults(family="qwen2_vl", default_layers=((28, 16),)),  # Qwen2-VL-7B: 16, untuned
    "qwen3_vl": IVCPDefaults(family="qwen3_vl", default_layers=QWEN3_LAYERS),
    "qwen3_vl_moe": IVCPDefaults(family="qwen3_vl_moe", default_layers=QWEN3_LAYERS),
    "llava": IVCPDefaults(family="llava", policy="union", retention=None, ivc_fraction=0.05, keys="prompt",
                          default_layers=((32, 16),)),  # LLaVA-1.5-7B: K = 16
    "internvl": IVCPDefaults(family="internvl", policy="thumb_budget", keys="prompt",
                             default_layers=((32, 16),)),  # InternVL2.5-8B: K = 16; other depths untuned
    # fg budget of the global view round(0.5 * 210) minus |IVC_g|, no overall budget; local rows 15 % IVC each
    # (2 / 4 / 6 / 9 tokens for n_w = 1 / 2 / 3 / 4). K / N_L = 17/27 (small, tuned by the paper); tiny and base
    # keep that relative depth (untuned).
    "deepseek_vl2": IVCPDefaults(family="deepseek_vl2", policy="global_local", ivc_fraction_by_role={"local_row": 0.15},
                                 query_offset=1, default_layers=((27, 17), (12, 8), (30, 19))),
}
IVC_RULES = ("reference", "applied")
GENERIC = IVCPDefaults(family="generic")


def family_defaults(family: str) -> IVCPDefaults:
    """The table entry of ``family`` (an adapter's ``family``), else the generic defaults under that name."""
    found = FAMILY_DEFAULTS.get(family)
    return found if found is not None else IVCPDefaults(family=family)
