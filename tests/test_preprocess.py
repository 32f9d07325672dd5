"""The test-time preprocessing is the peers' own, from the image file: SED's (detectron2's test mapper, then a squash
to the CLIP input) for the ``whole`` protocol and CAT-Seg's windows for ``slide``, against a fixture made by
``tests/fixtures/preprocess/make_fixture.py`` from the peers' code paths (it imports nothing of dpseg)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dpseg.config import EvalConfig
from dpseg.data.transforms import resize_image, shortest_edge_size
from dpseg.evaluation.protocols import mapped, predict_slide, whole_view
from dpseg.image_io import to_image_tensor

FIXTURE = Path(__file__).parent / "fixtures" / "preprocess"


def fixture():
    with safe_open(str(FIXTURE / "expected.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def reference():
    """The fixture script as a module: its ``get_output_shape`` and ``mapper`` are detectron2's."""
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_whole_protocol_feeds_the_model_what_sed_feeds_its_clip():
    expected, meta = fixture()
    image = to_image_tensor(str(FIXTURE / "image.png"))
    settings = EvalConfig(
        short_side=int(meta["short"]), max_side=int(meta["max_size"]), input_size=int(meta["sed_input"])
    )
    assert torch.equal(mapped(image, settings), expected["mapped"])  # PIL's bilinear on uint8, detectron2's size
    assert (whole_view(image, settings) - expected["sed_input"]).abs().max() < 1e-6


def test_slide_protocol_makes_catsegs_windows_and_global_view():
    expected, meta = fixture()
    image = to_image_tensor(str(FIXTURE / "image.png"))
    settings = EvalConfig(
        protocol="slide",
        short_side=int(meta["slide_short"]),
        slide_window=int(meta["kernel"]),
        slide_overlap=float(meta["overlap"]),
        input_size=int(meta["kernel"]),
    )
    assert torch.equal(mapped(image, settings), expected["slide_mapped"])
    seen = {}

    def forward(views):
        seen["views"] = views
        return {"pass1": torch.zeros(views.shape[0], 2, 16, 16)}

    predict_slide(forward, image, settings, 2)
    assert seen["views"].shape == expected["slide_views"].shape  # 2 x 2 windows + the global view
    assert (seen["views"] - expected["slide_views"]).abs().max() < 1e-6


@pytest.mark.parametrize("short, max_size", [(640, 2560), (768, 2666), (96, 120), (33, 1000)])
def test_the_new_size_is_detectron2s_for_every_shape(short, max_size):
    get_output_shape = reference().get_output_shape
    rng = np.random.default_rng(short)
    for h, w in [(480, 640), (640, 480), (500, 500), (1, 3000), (3000, 7)] + rng.integers(1, 4000, (200, 2)).tolist():
        assert shortest_edge_size(h, w, short, max_size) == get_output_shape(h, w, short, max_size), (h, w)


def test_resize_is_pils_bilinear_on_uint8():
    mapper = reference().mapper
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (61, 47, 3), dtype=np.uint8)
    ours = resize_image(torch.from_numpy(image).permute(2, 0, 1), shortest_edge_size(61, 47, 30, 2560))
    assert np.array_equal(ours.permute(1, 2, 0).numpy(), mapper(image, 30))
