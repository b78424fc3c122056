"""CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in
MLLMs", NeurIPS 2025, arXiv 2506.10967): before the language model, a determinantal point process over the visual
tokens with an instruction-conditioned kernel, selected by greedy MAP inference.

On the input embeddings (K = 0): S_ij = cos(e_i, e_j) between the image tokens; the relevance of token i is
r_i = mean_t cos(e_i, x_t) over the instruction tokens t (the text after the image; all text when there is none),
min-max normalised over the image to [0, 1] (all ones when constant). The conditional kernel is
L = diag(q) S diag(q) with q_i = exp(alpha r_i), alpha = theta / (2 (1 - theta)). Greedy MAP (the fast
Cholesky-update form of Chen et al., NeurIPS 2018) adds, k_i = round(rho L_i) times, the token with the largest
marginal gain d_j^2 = L_jj - |c_j|^2, i.e. argmax_j det(L_{Y+j}); ties go to the lower index. When every gain is
~0 (the kernel's rank is at most the embedding width) the rest is filled by relevance. Float32 on the CPU.

The paper computes relevance with the vision-language model's own text features (CLIP text tower for LLaVA, the
LLM's embeddings for the others; the LLaVA code negates the CLIP similarity); here every family uses the language
model's input embeddings, which is what K = 0 sees. With ``exclude`` (``WithIVC``: the IVC tokens) the DPP is
conditioned on them: they enter Y first and the fill maximises det(L_{IVC + Y}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ivcprune.core.ranking import rank
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import SampleContext
from ivcprune.methods.budgeted import countable_tokens, unavailable
from ivcprune.methods.divprune import scoring_dtype
from ivcprune.methods.prellm import PreLLMMethod
from ivcprune.methods.registry import register_method

GAIN_FLOOR = 100.0  # gains below GAIN_FLOOR * eps(dtype) * max L_ii count as 0 (rounding noise of the updates)


def conditional_kernel(visual: torch.Tensor, text: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L) kernel diag(q) S diag(q) and the normalised relevance r (L,), in float32 (float64 inputs: float64)."""
    v = torch.nn.functional.normalize(scoring_dtype(visual), dim=-1)
    similarity = v @ v.T
    if text.numel():
        relevance = (v @ torch.nn.functional.normalize(text.to(v.dtype), dim=-1).T).mean(dim=1)
    else:
        relevance = torch.ones(v.shape[0], dtype=v.dtype)
    spread = relevance.max() - relevance.min()
    relevance = (relevance - relevance.min()) / spread if float(spread) > 0 else torch.ones_like(relevance)
    quality = torch.exp(theta / (2.0 * (1.0 - theta)) * relevance)
    return quality[:, None] * similarity * quality[None, :], relevance


def greedy_map(kernel: torch.Tensor, candidates: torch.Tensor, n: int, given: torch.Tensor | None = None,
               fallback: torch.Tensor | None = None) -> list[int]:
    """Greedy MAP of a DPP: n of ``candidates``, each maximising det(L_Y) given the tokens already in Y
    (``given`` first, not counted). ``fallback`` (L,) orders the rest once every gain is at the rounding floor."""
    size = kernel.shape[0]
    n = min(n, candidates.numel())
    free = torch.zeros(size, dtype=torch.bool)
    free[candidates] = True
    gains = kernel.diagonal().clone()
    floor = GAIN_FLOOR * torch.finfo(kernel.dtype).eps * float(gains.max()) if size else 0.0
    given_list = [] if given is None else [int(j) for j in given.tolist()]
    basis = torch.zeros(n + len(given_list), size, dtype=kernel.dtype)  # the rows c_i of the incremental Cholesky
    used = 0

    def add(j: int) -> None:
        nonlocal used
        c = basis[:used]
        basis[used] = (kernel[j] - c[:, j] @ c) / torch.sqrt(gains[j])
        gains.sub_(basis[used] * basis[used])
        used += 1

    for j in given_list:
        if float(gains[j]) > floor:
            add(j)
    chosen: list[int] = []
    while len(chosen) < n:
        masked = torch.where(free, gains, torch.full_like(gains, float("-inf")))
        j = int(torch.argmax(masked))
        if float(masked[j]) <= floor:
            break
        chosen.append(j)
        free[j] = False
        add(j)
    if len(chosen) < n:
        rest = torch.nonzero(free, as_tuple=False).flatten()
        order = rest[rank(fallback[rest].float())] if fallback is not None else rest
        chosen.extend(order[:n - len(chosen)].tolist())
    return chosen


@register_method("cdpruner", suffix="CDPruner",
                 summary="CDPruner: DPP greedy MAP, instruction-conditioned similarity of the visual tokens (K = 0)")
@dataclass
class CDPruner(PreLLMMethod):
    theta: float = 0.5  # CDPruner paper, Sec. 3 (relevance/diversity trade-off theta; alpha = theta / (2 (1 - theta)))

    name: ClassVar[str] = "cdpruner"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.theta, bool) or not isinstance(self.theta, (int, float)) or not 0.0 <= self.theta < 1.0:
            raise ValueError(f"CDPruner theta must be in [0, 1), got {self.theta!r}")

    def kernel(self, ctx: SampleContext, image: ImageRecord) -> tuple[torch.Tensor, torch.Tensor]:
        text = ctx.queries(image, 0)
        return conditional_kernel(self.image_embeddings(ctx, image), self.embeddings(ctx, text), float(self.theta))

    def fill(self, ctx: SampleContext, image: ImageRecord, exclude: torch.Tensor, n: int) -> torch.Tensor:
        if n <= 0:
            return torch.empty(0, dtype=torch.long)
        kernel, relevance = self.kernel(ctx, image)
        free = torch.nonzero(~unavailable(ctx, image, exclude), as_tuple=False).flatten()
        chosen = greedy_map(kernel, free, n, exclude.long().cpu(), relevance)
        return torch.tensor(chosen, dtype=torch.long)

    def ranking(self, ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
        return self.fill(ctx, image, torch.empty(0, dtype=torch.long), countable_tokens(ctx, image).numel())
