"""The built-in synthetic open-vocabulary world (DESIGN §6): what ``dpseg quickstart`` runs on. See README.md here.

* :mod:`~dpseg.data.synthetic.world` - attributes, the 75 classes, the fixed seen/unseen split (two unseen cubes),
  the caption-only pattern synonyms, phrase parsing.
* :mod:`~dpseg.data.synthetic.render` - procedural scenes with exact pixel labels (background = ignore); the scene
  and prompt drawing styles.
* :mod:`~dpseg.data.synthetic.generator` - :class:`SyntheticGenerator`, the world's text-to-image generator.
* :mod:`~dpseg.data.synthetic.datasets` - the scenes written as custom-dataset folders, cached and keyed.
* :mod:`~dpseg.data.synthetic.clip_data` / :mod:`~dpseg.data.synthetic.clip_pretrain` - a tiny OpenCLIP pretrained
  contrastively on rendered objects at the scene resolution (128-px scenes and 2x2 mosaics), with the text gap.
* :mod:`~dpseg.data.synthetic.zeroshot` - its zero-shot checks at the scene resolution
  (``python -m dpseg.data.synthetic.zeroshot``).
* :mod:`~dpseg.data.synthetic.experiment` / :mod:`~dpseg.data.synthetic.report` - one quickstart run; the outputs.
"""
