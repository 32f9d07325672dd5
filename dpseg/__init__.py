"""dpseg: open-vocabulary semantic segmentation with dual-prompt cost volumes (DPSeg, CVPR 2025).

The main entry points, imported lazily so ``import dpseg`` stays fast::

    from dpseg import Segmenter, build_config, build_model, load_model
"""

__version__ = "0.1.0"

_LAZY = {
    "Segmenter": "dpseg.segmenter",
    "build_config": "dpseg.config",
    "build_model": "dpseg.build",
    "load_model": "dpseg.checkpoint",
    "save_model": "dpseg.checkpoint",
    "PromptSet": "dpseg.model.dual_prompt",
    "PromptBank": "dpseg.prompts.bank",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dpseg' has no attribute {name!r}")
