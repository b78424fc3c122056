"""IVC-Prune: training-free, prompt-aware vision-token pruning for LVLMs over stock transformers.

    import ivcprune
    method = ivcprune.IVCPrune(layer=16, retention=0.5)
    with ivcprune.prune(model, method) as trace:
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    sel = trace.selections[-1]     # kept / ivc / seeds per sample, counts, KV bytes
"""

from ivcprune.core.selection import ImageRecord, Selection
from ivcprune.methods import IVCPrune, PruningMethod, make_method
from ivcprune.methods.fastv import FastV
from ivcprune.methods.grid import UniformGrid
from ivcprune.methods.random import RandomPrune
from ivcprune.methods.with_ivc import WithIVC
from ivcprune.runtime.session import Trace, prune

__version__ = "0.1.0"

__all__ = ["IVCPrune", "PruningMethod", "prune", "Trace", "Selection", "ImageRecord", "__version__",
           "FastV", "RandomPrune", "UniformGrid", "WithIVC", "make_method"]
