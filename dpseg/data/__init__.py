"""Datasets: the zero-shot benchmarks, COCO-Stuff, custom folders, and training transforms.

A dataset item is ``{"image": uint8 (3, H, W) RGB, "label": int64 (H, W), "name": str}``. Labels use
:data:`IGNORE_INDEX` (-1) for unlabelled pixels whatever the on-disk convention (255, 65535, 459, ...).
Use :func:`build_dataset` with a catalog name (``a150``, ``a847``, ``pc59``, ``pc459``, ``voc20``, ``voc20b``,
``coco_stuff_171_train``, ``coco_stuff_171_val``) or a custom folder ``PATH`` / ``PATH:SPLIT``.
"""

IGNORE_INDEX = -1  # the label value of unlabelled pixels inside dpseg (never a class index)

__all__ = ["IGNORE_INDEX", "build_dataset", "list_datasets", "describe_dataset", "load_class_names"]


def __getattr__(name):
    # Lazy so that ``from dpseg.data import IGNORE_INDEX`` stays cheap and import cycles cannot form.
    if name in ("build_dataset", "list_datasets", "describe_dataset"):
        from dpseg.data import catalog

        return getattr(catalog, name)
    if name == "load_class_names":
        from dpseg.data.vocab import load_class_names

        return load_class_names
    raise AttributeError(f"module 'dpseg.data' has no attribute {name!r}")
