"""The built-in synthetic open-vocabulary world (DESIGN §6): what ``dpseg quickstart`` runs on. See README.md here.

* :mod:`~dpseg.data.synthetic.world` - attributes, the 75 classes, the fixed seen/unseen split, phrase parsing.
* :mod:`~dpseg.data.synthetic.render` - procedural scenes with exact pixel labels (background = ignore).
* :mod:`~dpseg.data.synthetic.generator` - :class:`SyntheticGenerator`, the world's text-to-image generator.
* :mod:`~dpseg.data.synthetic.datasets` - the scenes written as custom-dataset folders, cached and keyed.
* :mod:`~dpseg.data.synthetic.clip_pretrain` - a tiny OpenCLIP pretrained contrastively on rendered objects.
* :mod:`~dpseg.data.synthetic.zeroshot` - its zero-shot accuracy (``python -m dpseg.data.synthetic.zeroshot``).
* :mod:`~dpseg.data.synthetic.experiment` / :mod:`~dpseg.data.synthetic.report` - one quickstart run; the outputs.
"""
