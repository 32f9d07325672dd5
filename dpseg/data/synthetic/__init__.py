"""The built-in synthetic open-vocabulary world (DESIGN §6): what ``dpseg quickstart`` runs on.

* :mod:`~dpseg.data.synthetic.world` - attributes, the 75 classes, the fixed seen/unseen split, phrase parsing.
* :mod:`~dpseg.data.synthetic.render` - procedural scenes with exact pixel labels (background = ignore).
* :mod:`~dpseg.data.synthetic.generator` - :class:`SyntheticGenerator`, the world's text-to-image generator.
* :mod:`~dpseg.data.synthetic.datasets` - the scenes written as custom-dataset folders, cached and keyed.
* :mod:`~dpseg.data.synthetic.clip_pretrain` - a tiny OpenCLIP pretrained contrastively on rendered objects.
"""
