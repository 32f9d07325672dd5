"""dpseg: open-vocabulary semantic segmentation with dual-prompt cost volumes (DPSeg, CVPR 2025)."""

__version__ = "0.1.0"
