"""Convert the official dataset archives to the detectron2 layout the peers (SED, CAT-Seg) evaluate on.

One converter per benchmark (``coco_stuff``, ``a150``, ``a847``, ``pc59``, ``pc459``, ``voc``), each writing
the same label files as the peers' ``datasets/prepare_*.py`` scripts; ``verify`` checks a prepared root.
The id tables and the PC-459 val list next to this file are the peers' data, shipped as package data.
"""
