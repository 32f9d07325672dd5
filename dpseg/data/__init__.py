"""Datasets: the zero-shot benchmarks, COCO-Stuff, custom folders, and training transforms.

A dataset item is ``{"image": uint8 (3, H, W) RGB, "label": int64 (H, W), "name": str}``. Labels use
:data:`dpseg.vocab.IGNORE_INDEX` (-1) for unlabelled pixels whatever the on-disk convention (255, 65535, 459, ...).
Use :func:`~dpseg.data.catalog.build_dataset` with a catalog name (``a150``, ``a847``, ``pc59``, ``pc459``,
``voc20``, ``voc20b``, ``coco_stuff_171_train``, ``coco_stuff_171_val``) or a custom folder ``PATH`` / ``PATH:SPLIT``.
"""
