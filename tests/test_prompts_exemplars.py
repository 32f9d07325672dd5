import numpy as np
import pytest
import torch
from PIL import Image

from dpseg.clip_loading import build_towers
from dpseg.errors import DataError, InputError
from dpseg.image_io import CLIP_MEAN, load_image
from dpseg.model.prompt_image import OBJECT_FILL, prepare_prompt_image, prompt_frame
from dpseg.prompts.exemplars import (
    average_prompts,
    encode_prompt_images,
    find_exemplars,
)

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)


def test_keeps_aspect_and_pads_with_clip_mean():
    red = Image.new("RGB", (20, 10), (255, 0, 0))  # W=20, H=10 -> 16 x 8 content, 4 rows of padding above/below
    out = prepare_prompt_image(red, 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert torch.allclose(out[:, 4:12, :], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 8, 16), atol=1e-6)
    assert torch.equal(out[:, :4], MEAN.expand(3, 4, 16)) and torch.equal(out[:, 12:], MEAN.expand(3, 4, 16))
    tall = prepare_prompt_image(Image.new("RGB", (10, 40), (0, 0, 255)), 16)  # 4 x 16 content, centred
    assert torch.equal(tall[:, :, :6], MEAN.expand(3, 16, 6)) and torch.allclose(tall[2, :, 6:10], torch.ones(16, 4))


def test_pil_uint8_tensor_float_tensor_and_array_agree():
    arr = np.random.default_rng(0).integers(0, 256, (12, 18, 3), dtype=np.uint8)
    ref = prepare_prompt_image(Image.fromarray(arr), 24)
    chw = torch.from_numpy(arr).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    assert torch.equal(prepare_prompt_image(chw, 24), ref)
    assert torch.allclose(prepare_prompt_image(chw.float() / 255, 24), ref, atol=1e-6)
    assert torch.equal(prepare_prompt_image(arr, 24), ref)


def test_mask_frames_the_region_like_a_generated_image():
    """The one rule: a masked region fills OBJECT_FILL of a square frame around it, its context kept (not masked)."""
    img = torch.rand(3, 60, 80)
    mask = torch.zeros(60, 80, dtype=torch.bool)
    mask[20:34, 30:37] = True  # region 14 x 7 -> frame side round(14 / 0.7) = 20, centred on the region
    out = prepare_prompt_image(img, 20, mask=mask)  # size == side: no resampling, exact
    assert torch.equal(out, img[:, 17:37, 23:43])  # rows 27 - 10, cols 33 - 10 (context included, nothing masked)
    assert prompt_frame((20, 34, 30, 37), (60, 80), OBJECT_FILL) == (17, 23, 20)
    # near a border the frame moves inside the image; a frame larger than the image is padded with the mean colour
    assert prompt_frame((0, 10, 75, 80), (60, 80), 0.5) == (0, 60, 20)
    big = torch.zeros(30, 12, dtype=torch.bool)
    big[5:25, 2:10] = True  # side 29 > width 12: centred, mean-colour bands left and right
    framed = prepare_prompt_image(torch.rand(3, 30, 12), 29, mask=big)
    assert torch.equal(framed[:, :, :9], MEAN.expand(3, 29, 9)) and torch.equal(
        framed[:, :, 21:], MEAN.expand(3, 29, 8)
    )


def test_alpha_marks_the_region_and_clears_transparent_pixels():
    img = torch.rand(3, 40, 40)
    alpha = torch.zeros(40, 40, dtype=torch.bool)
    alpha[10:30, 15:25] = True
    rgba = np.concatenate(
        [(img.permute(1, 2, 0) * 255).round().byte().numpy(), (alpha.numpy() * 255).astype(np.uint8)[..., None]], -1
    )
    via_alpha = prepare_prompt_image(Image.fromarray(rgba, "RGBA"), 29)  # region 20 x 10 -> side 29
    top, left, side = prompt_frame((10, 30, 15, 25), (40, 40), OBJECT_FILL)
    rgb = torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255
    expected = torch.where(alpha, rgb, MEAN)[:, top : top + side, left : left + side]
    assert side == 29 and torch.allclose(via_alpha, expected, atol=1e-6)


@pytest.mark.parametrize(
    "image, mask, message",
    [
        (torch.rand(3, 8, 8), torch.zeros(8, 8), "mask (or alpha channel) of a visual prompt image is empty"),
        (torch.rand(3, 8, 8), torch.ones(4, 4), "the mask must have the image's size (8, 8)"),
        (torch.rand(2, 8, 8), None, "must have shape (3, H, W)"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), None, "must be uint8 or float"),
        ("cat.jpg", None, "must be a PIL image, tensor or array"),
    ],
)
def test_bad_prompt_images(image, mask, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare_prompt_image(image, 16, mask=mask)


def test_load_image_modes_and_errors(tmp_path):
    arr16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "g16.png")
    im = load_image(tmp_path / "g16.png")
    assert im.mode == "RGB" and np.array(im)[..., 0].max() == round(63000 / 65535 * 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (30, 10), (10, 200, 10)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (10, 30)
    Image.new("P", (4, 4)).save(tmp_path / "p.png", transparency=0)
    assert load_image(tmp_path / "p.png").mode == "RGBA"
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg"):
        load_image(tmp_path / "broken.jpg")
    with pytest.raises(DataError, match="cannot read image .*absent.png"):
        load_image(tmp_path / "absent.png")


def test_find_exemplars(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.jpg", "a.PNG", ".DS_Store", "notes.txt"):
        (tmp_path / "cat" / name).write_bytes(b"x")
    assert {k: [p.name for p in v] for k, v in find_exemplars(tmp_path).items()} == {"cat": ["a.PNG", "b.jpg"]}
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataError, match=r"exemplar class folder .*dog holds no images"):
        find_exemplars(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        find_exemplars(tmp_path / "nope")
    with pytest.raises(DataError, match="is not a directory"):
        find_exemplars(tmp_path / "cat" / "b.jpg")
    with pytest.raises(DataError, match="has no class sub-folders"):
        find_exemplars(tmp_path / ".hidden")


@pytest.mark.parametrize("other", ["Cat", "cat  ,  Kitty", "CAT,kitty "])
def test_exemplar_folders_naming_one_class_twice_are_refused(tmp_path, other):
    """Before issue 17 the segmenter kept one of the two folders and silently dropped the other."""
    for name in ("cat, kitty" if "kitty" in other.lower() else "cat", other):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.jpg").write_bytes(b"x")
    with pytest.raises(
        DataError,
        match=r"has sub-folders for '(?i:cat).*names that differ only in case or spacing are one "
        r"class\) more than once; merge them",
    ):
        find_exemplars(tmp_path)


def test_encode_prompt_images_matches_tower_and_is_batch_independent(tiny_cfg):
    _, prompt, _ = build_towers(tiny_cfg.model)
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)) for i in range(5)
    ]
    v, stages = encode_prompt_images(prompt, images, 32, batch_size=2)
    assert v.shape == (5, 32) and [s.shape for s in stages] == [(5, 16), (5, 32), (5, 64)]
    assert torch.allclose(v.norm(dim=-1), torch.ones(5), atol=1e-5)
    with torch.no_grad():
        ref_v, ref_stages = prompt.encode_prompts(torch.stack([prepare_prompt_image(im, 32) for im in images]))
    assert torch.allclose(v, ref_v, atol=1e-5) and all(
        torch.allclose(a, b, atol=1e-5) for a, b in zip(stages, ref_stages)
    )
    mean_v, mean_stages = average_prompts(v, stages)
    assert torch.allclose(mean_v, torch.nn.functional.normalize(v.mean(0), dim=-1), atol=1e-6)
    assert torch.allclose(mean_stages[2], stages[2].mean(0))
    with pytest.raises(InputError, match="no images to encode"):
        encode_prompt_images(prompt, [], 32)


def test_keep_agreeing_images_replaces_the_images_that_disagree_with_the_text_by_the_kept_ones_mean():
    """model.visual_prompt_keep: per class, the images whose V agrees least with the mean text are replaced (V and
    v_j) by the mean of the kept ones (V renormalised, as average_prompts averages); keep = 1 changes nothing; bad
    shares are refused."""
    import math

    from dpseg.errors import InputError
    from dpseg.model.dual_prompt import PromptSet
    from dpseg.prompts.agreement import keep_agreeing_images

    text = torch.tensor([[1.0, 0.0]] * 4).expand(2, 4, 2).clone()  # (K=2, M=4, d=2): both classes' text is e_0
    visual = torch.tensor(
        [[[1.0, 0.1], [0.0, 1.0], [1.0, -0.1], [-1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [-1.0, 1.0]]]
    )  # class 0 agrees with images 0 and 2; class 1 with images 1 and 2
    stage = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # (K, M, D_j)
    prompts = PromptSet(["a", "b"], text, visual, [stage, stage * 2, stage * 3])
    out = keep_agreeing_images(prompts, 0.5)
    assert torch.equal(out.text, text)
    for k, kept, dropped in ((0, [0, 2], [1, 3]), (1, [1, 2], [0, 3])):
        assert torch.equal(out.visual[k, kept], visual[k, kept])
        for m in dropped:
            mean_v = torch.nn.functional.normalize(
                torch.nn.functional.normalize(visual[k, kept], dim=-1).mean(0), dim=-1
            )
            assert torch.allclose(out.visual[k, m], mean_v)  # averaged as every prompt image is (average_prompts)
            assert torch.allclose(out.visual_stages[2][k, m], 3 * stage[k, kept].mean(0))
    assert keep_agreeing_images(prompts, 1.0) is prompts
    one = torch.nn.functional.normalize(keep_agreeing_images(prompts, 0.01).visual[0], dim=-1)  # 1 image kept
    assert math.isclose(float(one.std(0).sum()), 0.0, abs_tol=1e-6)  # every template shows that image
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(InputError, match="share of a class's prompt images kept, in \\(0, 1\\]"):
            keep_agreeing_images(prompts, bad)
