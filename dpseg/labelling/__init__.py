"""Labelling a whole image collection with one vocabulary (``dpseg label``): sharded over torchrun's ranks, batched,
resumable and exact, with COCO output. The entry point is :func:`dpseg.labelling.run.label_collection`;
:mod:`~dpseg.labelling.manifest` (the image list and its fixed batches), :mod:`~dpseg.labelling.job` (the output
folder and its key), :mod:`~dpseg.labelling.loader` (decoding in worker processes), :mod:`~dpseg.labelling.coco`
(RLE annotations, shards, merge, summary) and :mod:`~dpseg.labelling.progress` (one progress line over all ranks).
"""
