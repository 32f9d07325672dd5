"""Prompt-bank build with a tiny random diffusers pipeline: contents, resumption, sharding, corruption."""

import os
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from dpseg.clip_loading import build_towers
from dpseg.config import build_config
from dpseg.errors import BankError, InputError
from dpseg.prompts.bank import PromptBank
from dpseg.prompts.builder import build_bank
from dpseg.prompts.exemplars import encode_prompt_images
from dpseg.prompts.generate import generator_prompt, get_generator, image_seed
from dpseg.prompts.manifest import make_key
from dpseg.prompts.templates import get_templates
from dpseg.prompts.tiny_pipeline import make_tiny_pipeline

CLASSES = ["cat", "sofa, couch", "traffic light", "bed "]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cfg = build_config("dpseg-tiny", overrides=["prompts.resolution=16", "prompts.steps=2", "prompts.num_templates=3"])
    torch.manual_seed(0)
    _, prompt, text = build_towers(cfg.model)
    pipe = make_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd")
    gen = get_generator(str(pipe), cfg.prompts, device="cpu")
    templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
    return cfg, prompt, text, gen, templates


def _new_bank(env, path, images_per_class=0, seed=0):
    cfg, prompt, text, gen, templates = env
    key = make_key(prompt, text, templates, cfg.model.prompt_image_size)
    return PromptBank.create(path, key, gen.identity, "tiny-sd", seed, images_per_class)


def _build(env, bank, classes=CLASSES, generator=None, **kw):
    _, prompt, text, gen, _ = env
    return build_bank(bank, classes, generator or gen, prompt, text, progress=False, **kw)


def _contents(bank):
    out = {}
    for path in sorted((bank.root / "classes").glob("[!.]*.safetensors")):
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            out[path.name] = ({k: t.clone() for k, t in load_file(str(path)).items()}, f.metadata())  # not mmap-backed
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        (ta, ma), (tb, mb) = a[name], b[name]
        assert ma == mb and ta.keys() == tb.keys(), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k, (ta[k].float() - tb[k].float()).abs().max())


class Interrupting:
    """Wraps a generator and raises KeyboardInterrupt (a Ctrl-C) on call number ``after``."""

    def __init__(self, inner, after):
        self.inner, self.after, self.calls, self.identity = inner, after, 0, inner.identity

    def generate(self, texts, seeds):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.inner.generate(texts, seeds)


def test_build_stores_text_and_encoded_generated_images(env, tmp_path):
    cfg, prompt, text, gen, templates = env
    bank = _new_bank(env, tmp_path / "bank")
    report = _build(env, bank, keep_images=True, batch_size=2)
    assert (
        report.built == ["cat", "sofa, couch", "traffic light", "bed"] and report.images == 12 and report.skipped == 0
    )
    ps = bank.prompt_set(["bed", "cat"], prompt_encoder=prompt, text_tower=text)
    assert ps.class_names == ["bed", "cat"] and ps.text.shape == (2, 3, 32) and ps.visual.shape == (2, 3, 32)
    assert [v.shape for v in ps.visual_stages] == [(2, 3, 16), (2, 3, 32), (2, 3, 64)]
    assert torch.allclose(ps.text, text.encode(["bed", "cat"], templates), atol=1e-6)
    entry = bank.load_class("sofa, couch")
    assert entry["meta"]["source"] == "generated" and entry["seeds"].tolist() == [
        image_seed(0, "sofa, couch", i) for i in range(3)
    ]
    pngs = sorted(bank.image_dir("sofa, couch").glob("*.png"))
    assert len(pngs) == 3
    # image 1 of "sofa, couch" is template 1 filled with the first synonym, drawn with its own seed
    (again,) = gen.generate([generator_prompt(templates[1], "sofa, couch")], [image_seed(0, "sofa, couch", 1)])
    assert np.array_equal(np.array(Image.open(pngs[1])), np.array(again))
    v, stages = encode_prompt_images(prompt, [Image.open(p) for p in pngs], cfg.model.prompt_image_size)
    assert torch.allclose(entry["visual"], v, atol=1e-5) and torch.allclose(
        entry["visual_stages"][2], stages[2], atol=1e-5
    )
    assert not torch.allclose(entry["visual"][0], entry["visual"][1], atol=1e-3)  # one image per template
    info = bank.info()
    assert info["num_classes"] == 4 and info["sources"] == {"generated": 4} and info["kept_images"] == 12


def test_interrupted_build_resumes_to_the_same_bank(env, tmp_path):
    reference = _new_bank(env, tmp_path / "ref")
    _build(env, reference)
    bank = _new_bank(env, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        _build(env, bank, generator=Interrupting(env[3], after=5), batch_size=1)  # dies in the 2nd class
    assert bank.missing(CLASSES) == ["sofa, couch", "traffic light", "bed"]
    stale = bank.root / "classes" / ".sofa_couch-0.safetensors.x1.tmp"  # a write cut off by a kill
    stale.write_bytes(b"half a file")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    young = bank.root / "classes" / ".bed-1.safetensors.x2.tmp"
    young.write_bytes(b"another writer, still running")
    assert bank.info()["temp_files"] == 2
    counting = Interrupting(env[3], after=10**6)
    report = _build(env, bank, generator=counting)
    assert report.skipped == 1 and report.built == ["sofa, couch", "traffic light", "bed"] and counting.calls == 3
    assert not stale.exists() and young.exists()  # old leftovers removed; a live writer's file left alone
    _same(_contents(reference), _contents(bank))
    assert _build(env, bank).built == []


def test_sharded_ranks_build_disjoint_shares_of_the_same_bank(env, tmp_path):
    reference = _new_bank(env, tmp_path / "ref")
    _build(env, reference)
    bank = _new_bank(env, tmp_path / "sharded")
    reports = {}

    def rank(r):  # as under torchrun: each rank opens the bank and loads its own generator
        mine = PromptBank.open(bank.root)
        generator = get_generator(str(env[3].path), env[0].prompts, device="cpu")
        reports[r] = _build(env, mine, generator=generator, rank=r, world_size=2)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reports[0].built == ["cat", "traffic light"] and reports[1].built == ["sofa, couch", "bed"]
    _same(_contents(reference), _contents(bank))
    with pytest.raises(InputError, match="rank 2 is outside world size 2"):
        _build(env, bank, rank=2, world_size=2)


def test_truncated_class_file_is_reported_and_rebuilt(env, tmp_path):
    _, prompt, text, _, _ = env
    bank = _new_bank(env, tmp_path / "bank")
    _build(env, bank, classes=["cat", "bed"])
    before = _contents(bank)
    path = bank.class_path("cat")
    path.write_bytes(path.read_bytes()[:100])
    assert bank.missing(["cat", "bed"]) == ["cat"]
    with pytest.raises(
        BankError, match=r"lacks 1 of the 2 classes \(cat\).*dpseg prompts build .* --generator tiny-sd --out "
    ):
        bank.prompt_set(["cat", "bed"], prompt_encoder=prompt, text_tower=text)
    assert _build(env, bank, classes=["cat", "bed"]).built == ["cat"]
    _same(before, _contents(bank))


def test_images_per_class_shares_images_across_templates(env, tmp_path):
    _, prompt, text, _, _ = env
    fewer = _new_bank(env, tmp_path / "two", images_per_class=2)
    assert _build(env, fewer, classes=["cat"]).images == 2
    v = fewer.load_class("cat")["visual"]  # 3 templates, 2 images: template 2 reuses image 0
    assert torch.allclose(v[2], v[0], atol=1e-6) and not torch.allclose(v[1], v[0], atol=1e-3)
    more = _new_bank(env, tmp_path / "four", images_per_class=4)
    entry = build_bank(more, ["cat"], env[3], prompt, text, progress=False, keep_images=True) and more.load_class("cat")
    imgs = [Image.open(p) for p in sorted(more.image_dir("cat").glob("*.png"))]
    enc, _ = encode_prompt_images(prompt, imgs, env[0].model.prompt_image_size)
    assert len(imgs) == 4 and torch.allclose(entry["visual"][0], F.normalize(enc[0] + enc[3], dim=-1), atol=1e-5)
    assert torch.allclose(entry["visual"][1], enc[1], atol=1e-5)


def test_existing_bank_refuses_other_settings(env, tmp_path):
    cfg, prompt, text, gen, templates = env
    _new_bank(env, tmp_path / "bank")
    key = make_key(prompt, text, templates, cfg.model.prompt_image_size)
    with pytest.raises(BankError, match="another templates_id"):
        PromptBank.create(tmp_path / "bank", make_key(prompt, text, templates[:2], cfg.model.prompt_image_size))
    with pytest.raises(BankError, match="another prompt_image_size"):
        PromptBank.create(tmp_path / "bank", make_key(prompt, text, templates, 64))
    with pytest.raises(BankError, match="generated with generator .* not 'other-sd'"):
        PromptBank.create(tmp_path / "bank", key, "other-sd", "", 0, 0)
    with pytest.raises(BankError, match="generated with seed 0, not 7"):
        PromptBank.create(tmp_path / "bank", key, gen.identity, "", 7, 0)
    with pytest.raises(BankError, match="generated with images_per_class 0, not 2"):
        PromptBank.create(tmp_path / "bank", key, gen.identity, "", 0, 2)
    bank = PromptBank.open(tmp_path / "bank")
    with pytest.raises(BankError, match="generated with generator"):
        build_bank(
            bank,
            ["cat"],
            Interrupting(get_generator(str(gen.path), build_config("dpseg-tiny").prompts), 1),
            prompt,
            text,
        )
    with pytest.raises(BankError, match="built with other templates"):
        build_bank(bank, ["cat"], gen, prompt, text, templates=templates[:1], progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(BankError, match="is not empty and holds no manifest.json"):
        PromptBank.create(tmp_path / "other", key)
    with pytest.raises(BankError, match="is not a prompt bank"):
        PromptBank.open(tmp_path / "other")
    (tmp_path / "other" / "manifest.json").write_text("{not json")
    with pytest.raises(BankError, match="manifest .*manifest.json is not valid JSON"):
        PromptBank.open(tmp_path / "other")
    (tmp_path / "other" / "manifest.json").write_text('{"format": "dpseg-prompt-bank", "version": 99}')
    with pytest.raises(BankError, match="format version 99"):
        PromptBank.open(tmp_path / "other")
