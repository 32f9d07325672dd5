"""Building a model without drawing random weights that a checkpoint then overwrites, safely across threads.

:func:`skip_random_init` makes ``torch.nn.init``'s (and timm's) random initialisers no-ops in the calling thread;
:data:`INIT_PATCH_LOCK` is held by everything that patches them (this module, and library loads that patch them
themselves, such as diffusers' ``from_pretrained``).
"""

from __future__ import annotations

import contextlib
import functools
import threading

# the random initialisers a model's constructors call, and the helpers behind them (modules such as
# nn.MultiheadAttention import xavier_uniform_ by name; it draws through _no_grad_uniform_); missing names are skipped
_RANDOM_INITS = {
    "torch.nn.init": (
        "uniform_",
        "normal_",
        "trunc_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
        "orthogonal_",
        "sparse_",
        "_no_grad_uniform_",
        "_no_grad_normal_",
        "_no_grad_trunc_normal_",
    ),
    "timm.layers.weight_init": ("_trunc_normal_", "trunc_normal_tf_", "variance_scaling_"),
}


_SKIPPING = threading.local()


# torch.nn.init's functions are module globals, replaced for the whole process by whoever builds a model without
# drawing its weights: skip_random_init below, and transformers' / diffusers' from_pretrained (their no_init_weights).
# Each saves what it finds and puts it back on exit, so two of them overlapping in two threads can leave the other's
# no-op in place for good (every later model then keeps torch.empty's garbage: NaN on some machines). Everything here
# that patches, or loads through a library that patches, holds this lock.
INIT_PATCH_LOCK = threading.RLock()


def init_skipped() -> bool:
    """Whether this thread is inside :func:`skip_random_init` (a model being built for a checkpoint's weights)."""
    return getattr(_SKIPPING, "active", False)


@contextlib.contextmanager
def skip_random_init():
    """Within the block, in this thread only, the random initialisers of ``torch.nn.init`` (and timm's) leave their
    tensor as it is: for building a model whose every parameter is then loaded strictly from a checkpoint. Drawing
    random numbers that are thrown away costs a dpseg-b model ~3 CPU s of its ~3.5 s load (benchmarks/bench_startup.py).
    Buffers computed in constructors (causal masks, normalisation constants) are not random and are built as usual.
    Holds :data:`INIT_PATCH_LOCK`: another thread's model load waits, another thread's plain initialisation does not."""
    import importlib

    owner = threading.get_ident()
    saved = []

    def skipping(original):
        @functools.wraps(original)
        def init(tensor, *args, **kwargs):
            if threading.get_ident() == owner:
                return tensor
            return original(tensor, *args, **kwargs)

        return init

    with INIT_PATCH_LOCK:
        try:
            for module_name, names in _RANDOM_INITS.items():
                try:
                    module = importlib.import_module(module_name)
                except ImportError:
                    continue
                for name in names:
                    original = getattr(module, name, None)
                    if callable(original):
                        saved.append((module, name, original))
                        setattr(module, name, skipping(original))
            _SKIPPING.active = True
            yield
        finally:
            _SKIPPING.active = False
            for module, name, original in reversed(saved):
                setattr(module, name, original)
