"""torchrun support: rank discovery, gloo barriers with a timeout that names missing ranks, and shared-disk checks.

The harness exchanges no tensors, only small Python objects and barriers, so it always uses a gloo group and
is testable on CPU with ``torchrun --nproc-per-node 2`` (docs/HARNESS.md §9).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from pathlib import Path


class BarrierTimeout(RuntimeError):
    """A barrier was not reached by every rank within ``--dist-timeout``."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = 10800.0
    _group: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self, what: str = "") -> None:
        """A monitored barrier; on timeout rank 0 reports which ranks never arrived."""
        if not self.enabled:
            return
        import torch.distributed as dist

        try:
            dist.monitored_barrier(group=self._group, timeout=datetime.timedelta(seconds=self.timeout_s),
                                   wait_all_ranks=True)
        except RuntimeError as err:  # gloo reports the missing ranks in the message
            raise BarrierTimeout(f"rank {self.rank}: barrier '{what}' failed after {self.timeout_s:g} s: "
                                 f"{err}. Rows already written stay on disk; rerun to finish.") from err

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (used for decisions only rank 0 can make, e.g. the lock)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self._group)
        return out

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def device(self) -> str:
        """``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
        try:
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank % max(torch.cuda.device_count(), 1)}"
        except ImportError:
            pass
        return "cpu"


def init(timeout_s: float = 10800.0) -> DistContext:
    """Read RANK / WORLD_SIZE / LOCAL_RANK; join a gloo group when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, timeout_s=float(timeout_s))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=float(timeout_s)))
        ctx._group = dist.group.WORLD
    return ctx


def check_shared_storage(ctx: DistContext, work_dir: Path, run_id: str) -> None:
    """Every rank writes a marker; rank 0 must see all of them, otherwise ``--work-dir`` is not shared."""
    if not ctx.enabled:
        return
    marker_dir = Path(work_dir) / ".markers" / run_id
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / f"rank{ctx.rank}").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    ctx.barrier("shared-storage markers")
    missing = []
    if ctx.is_main:
        missing = [r for r in range(ctx.world_size) if not (marker_dir / f"rank{r}").exists()]
    missing = ctx.broadcast(missing)
    if missing:
        raise RuntimeError(f"--work-dir {work_dir} is not shared by all ranks: rank 0 cannot see the markers of "
                           f"rank(s) {missing} under {marker_dir}. Multi-node runs need shared storage.")
    ctx.barrier("markers checked")
    if ctx.is_main:
        for p in marker_dir.glob("rank*"):
            p.unlink(missing_ok=True)
        try:
            marker_dir.rmdir()
            marker_dir.parent.rmdir()
        except OSError:
            pass


def run_id() -> str:
    """An id shared by all ranks of one torchrun launch (elastic run id, else the rendezvous address)."""
    rid = os.environ.get("TORCHELASTIC_RUN_ID")
    if rid and rid != "none":
        return f"run-{rid}"
    return f"run-{os.environ.get('MASTER_ADDR', 'local')}-{os.environ.get('MASTER_PORT', '0')}"
