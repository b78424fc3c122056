"""Selection policies (docs/ALGORITHM.md §2 F7): turn IVC sets, seeds and the foreground score into kept image tokens.

All inputs and outputs are span-relative index tensors; results are sorted and deduplicated.
"""

from __future__ import annotations

import torch

from ivcprune.core.ranking import count, rank, top_k


def _union(*parts: torch.Tensor) -> torch.Tensor:
    parts = [p.reshape(-1).long() for p in parts if p is not None and p.numel()]
    if not parts:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([p.cpu() for p in parts]).unique()


def fill_by_score(prio: torch.Tensor, scores: torch.Tensor, target: int) -> torch.Tensor:
    """prio, then the highest-scoring tokens not in prio until ``target`` tokens are selected (never fewer than prio)."""
    need = target - prio.numel()
    if need <= 0:
        return prio
    order = rank(scores.cpu())
    in_prio = torch.zeros(scores.numel(), dtype=torch.bool)
    in_prio[prio] = True
    extra = order[~in_prio[order]][:need]
    return _union(prio, extra)


def budget(ivc: torch.Tensor, seeds: torch.Tensor, scores: torch.Tensor, length: int, retention: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BUDGET(rho) (Qwen): prio = IVC u seeds; fill up to T = round(rho L) in descending-F order.

    Returns (selected, foreground fill). If |prio| >= T nothing is added (selection may exceed T).
    """
    prio = _union(ivc, seeds)
    selected = fill_by_score(prio, scores, count(length, retention))
    return selected, _difference(selected, prio)


def union(ivc: torch.Tensor, seeds: torch.Tensor, scores: torch.Tensor, length: int, fg_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """UNION(f_fg) (LLaVA): top_k(F, round(f_fg L)) u seeds u IVC; there is no budget."""
    fg = top_k(scores.cpu(), count(length, fg_fraction))
    return _union(fg, seeds, ivc), _difference(_union(fg), _union(seeds, ivc))


def _difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.numel() == 0 or b.numel() == 0:
        return a
    return a[~torch.isin(a, b)]


def upsample_thumbnail(cells: torch.Tensor, side: int, grid: tuple[int, int]) -> torch.Tensor:
    """Map thumbnail cells onto the tiled full grid (docs/ALGORITHM.md §4.2; InternVL).

    cells: thumbnail-relative indices r*side + c of a side x side thumbnail; grid: (w_b, h_b) tiles.
    Cell (r, c) covers full-grid rows r*h_b + dy (dy < h_b) and columns c*w_b + dx (dx < w_b); full-grid cell
    (R, C) lies in tile (R // side) * w_b + C // side at in-tile offset (R % side) * side + C % side.
    Returns span-relative indices (tile * side**2 + offset), sorted and deduplicated.
    """
    w_b, h_b = grid
    cells = cells.reshape(-1).long().cpu()
    if cells.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    r, c = cells // side, cells % side
    dy, dx = torch.meshgrid(torch.arange(h_b), torch.arange(w_b), indexing="ij")
    rows = (r[:, None] * h_b + dy.reshape(1, -1)).reshape(-1)
    cols = (c[:, None] * w_b + dx.reshape(1, -1)).reshape(-1)
    tile = (rows // side) * w_b + cols // side
    offset = (rows % side) * side + cols % side
    return (tile * side * side + offset).unique()


def thumb_budget(
    ivc_thumb: torch.Tensor,
    ivc_tiles: torch.Tensor,
    seeds: torch.Tensor,
    scores: torch.Tensor,
    grid: tuple[int, int],
    retention: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """THUMB-BUDGET(rho) (InternVL, docs/ALGORITHM.md §2 F7): foreground chosen on the thumbnail, mapped onto
    the tiles.

    ivc_thumb, seeds: thumbnail-relative; scores: F over the T_t thumbnail tokens; ivc_tiles: span-relative
    (tiles before the thumbnail). grid = (w_b, h_b); n = w_b*h_b + 1 tiles, or 1 tile (grid (1, 1)) that acts
    as the thumbnail and is not up-sampled. Returns (selected, foreground) as span-relative indices, where
    foreground = the selected tokens that came from F (thumbnail picks, their up-sampled cells, the fill).
    """
    tile_tokens = scores.numel()
    side = int(round(tile_tokens ** 0.5))
    if side * side != tile_tokens:
        raise ValueError(f"THUMB-BUDGET needs square tiles, got {tile_tokens} tokens per tile")
    w_b, h_b = grid
    tiles = w_b * h_b + 1 if w_b * h_b > 1 else 1
    thumb0 = (tiles - 1) * tile_tokens  # span offset of the thumbnail
    length = tiles * tile_tokens
    scores = scores.cpu()
    ivc_thumb = _union(ivc_thumb)
    order = rank(scores)
    not_ivc = order[~torch.isin(order, ivc_thumb)]
    fg = not_ivc[:max(0, count(tile_tokens, retention) - ivc_thumb.numel())]
    up = upsample_thumbnail(fg, side, grid) if tiles > 1 else torch.empty(0, dtype=torch.long)
    prio = _union(ivc_thumb + thumb0, fg + thumb0, ivc_tiles, up, _union(seeds) + thumb0)
    target = max(1, count(length, retention))
    fill = torch.empty(0, dtype=torch.long)
    if prio.numel() < target:
        rest = order[~torch.isin(order + thumb0, prio)]
        fill = rest[:target - prio.numel()] + thumb0
        selected = _union(prio, fill)
    else:
        selected = prio[:target]  # prio is sorted: the `target` lowest span indices
    foreground = _union(fg + thumb0, up, fill)
    return selected, foreground[torch.isin(foreground, selected)]


# --- GLOBAL-LOCAL (DeepSeek-VL2, docs/ALGORITHM.md §2 F7 and §4.2) -----------------------------------------------
# Indices are relative to their own view: global cell (i, j) is i*(g+1) + j (j == g is the row's newline), local
# cell (r, c) of the stitched tiles is r*W + c with W = g*n_w + 1 (c == g*n_w is the newline). The caller adds the
# view offsets and the separator, so the same functions serve either view order.


def local_rows(g: int, grid: tuple[int, int]) -> list[torch.Tensor]:
    """The local view's rows (newline included) as IVC groups: g*n_h groups of W = g*n_w + 1 cells."""
    n_w, n_h = grid
    width = g * n_w + 1
    return [torch.arange(r * width, (r + 1) * width) for r in range(g * n_h)]


def global_to_local(cells: torch.Tensor, g: int, grid: tuple[int, int]) -> torch.Tensor:
    """Global cell (i, j) -> local rows [i*n_h, (i+1)*n_h) x columns [j*n_w, (j+1)*n_w) (sorted, unique).

    The map ignores that the two views are letterboxed differently (kept for parity, docs/ALGORITHM.md §4.3).
    """
    n_w, n_h = grid
    cells = _union(cells)
    if cells.numel() == 0:
        return cells
    i, j = cells // (g + 1), cells % (g + 1)
    if bool((j >= g).any()):
        raise ValueError("global newline cells have no local counterpart")
    dy, dx = torch.meshgrid(torch.arange(n_h), torch.arange(n_w), indexing="ij")
    rows = i[:, None] * n_h + dy.reshape(1, -1)
    cols = j[:, None] * n_w + dx.reshape(1, -1)
    return (rows * (g * n_w + 1) + cols).reshape(-1).unique()


def global_local(
    ivc_global: torch.Tensor,
    ivc_rows: torch.Tensor,
    seeds: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    g: int,
    grid: tuple[int, int],
    retention: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GLOBAL-LOCAL (DeepSeek-VL2): foreground picked on the global view and mapped onto the local tiles.

    ivc_global, seeds, valid: global-view indices (valid = cells neither newline nor letterbox padding);
    scores: F over the g*(g+1) global positions; ivc_rows: local-view indices (the per-row IVC sets).
    fg = the first max(1, round(retention * g(g+1)) - |IVC_g|) valid cells in F order outside IVC_g.
    Returns (global selection, local selection, fg): IVC_g u fg u seeds u newlines, and
    IVC_rows u map(fg u seeds) u newlines. There is no overall budget; the separator is the caller's.
    """
    n_w, n_h = grid
    n_global = g * (g + 1)
    if scores.numel() != n_global:
        raise ValueError(f"GLOBAL-LOCAL needs {n_global} global scores, got {scores.numel()}")
    ivc_global, valid = _union(ivc_global), _union(valid)
    order = rank(scores.cpu())
    allowed = torch.isin(order, valid) & ~torch.isin(order, ivc_global)
    fg = order[allowed][:max(1, count(n_global, retention) - ivc_global.numel())].sort().values
    width = g * n_w + 1
    global_newlines = torch.arange(g) * (g + 1) + g
    local_newlines = torch.arange(g * n_h) * width + width - 1
    global_sel = _union(ivc_global, fg, seeds, global_newlines)
    local_sel = _union(ivc_rows, global_to_local(_union(fg, seeds), g, grid), local_newlines)
    return global_sel, local_sel, fg
