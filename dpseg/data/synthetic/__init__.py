"""The built-in synthetic open-vocabulary world: what ``dpseg quickstart`` runs on. See README.md here.

* :mod:`~dpseg.data.synthetic.world` - attributes, the 75 classes, the fixed seen/unseen split (two unseen cubes),
  the caption-only pattern synonyms, phrase parsing.
* :mod:`~dpseg.data.synthetic.render` - procedural scenes with exact pixel labels (background = ignore); the scene
  and prompt drawing styles.
* :mod:`~dpseg.data.synthetic.generator` - :class:`SyntheticGenerator`, the world's text-to-image generator, with its
  own per-class failures (world v3); importing this package registers it as the prompt-bank generator named
  ``synthetic``.
* :mod:`~dpseg.data.synthetic.folders` - the scenes written as custom-dataset folders (seen train/val/test, unseen
  test, unseen-all test), cached and keyed.

The experiment that runs on the world (the tiny CLIP pretrained at the scene resolution and its zero-shot checks,
the DPSeg variants, the report) is :mod:`dpseg.quickstart`.
"""

from dpseg.data.synthetic import generator as _generator  # noqa: F401 - registers the "synthetic" generator
