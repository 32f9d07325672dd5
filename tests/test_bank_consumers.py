"""Using a bank: prompt sets checked against the model, missing classes, exemplar folders, text-only prompts."""

import copy
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import flip_tensor_bit, strip_content_hash
from PIL import Image

from dpseg.clip_loading import build_towers
from dpseg.errors import BankError, DataError, InputError
from dpseg.prompts.bank import PromptBank, text_only_prompt_set
from dpseg.prompts.builder import add_exemplars, build_bank
from dpseg.prompts.exemplars import encode_prompt_images, find_exemplars
from dpseg.prompts.manifest import make_key
from dpseg.prompts.templates import get_templates


class NoiseGenerator:
    """A fast stand-in generator: a seeded random image of a seeded random size per (text, seed)."""

    identity = "noise-v1"

    def generate(self, texts, seeds):
        out = []
        for text, seed in zip(texts, seeds):
            rng = np.random.default_rng([seed, len(text)])
            out.append(Image.fromarray(rng.integers(0, 256, (int(rng.integers(12, 40)), 24, 3), dtype=np.uint8)))
        return out


@pytest.fixture(scope="module")
def towers(tiny_cfg_module):
    torch.manual_seed(0)
    _, prompt, text = build_towers(tiny_cfg_module.model)
    return prompt, text, get_templates("imagenet80", 3), tiny_cfg_module.model.prompt_image_size


@pytest.fixture(scope="module")
def tiny_cfg_module():
    from dpseg.config import build_config

    return build_config("dpseg-tiny")


@pytest.fixture(scope="module")
def pristine(towers, tmp_path_factory):
    prompt, text, templates, size = towers
    root = tmp_path_factory.mktemp("pristine") / "bank"
    b = PromptBank.create(root, make_key(prompt, text, templates, size), NoiseGenerator.identity, "noise")
    build_bank(b, ["cat", "dog", "sofa, couch"], NoiseGenerator(), prompt, text, progress=False)
    return root


@pytest.fixture
def bank(pristine, tmp_path):
    return PromptBank.open(shutil.copytree(pristine, tmp_path / "bank"))


def _perturbed(module):
    other = copy.deepcopy(module)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    return other


def test_prompt_set_with_a_model_object(bank, towers):
    prompt, text, templates, _ = towers
    model = SimpleNamespace(prompt_encoder=prompt, text_encoder=text)
    ps = bank.prompt_set(["sofa,couch", "cat"], model)  # synonyms matched after whitespace normalisation
    assert ps.class_names == ["sofa,couch", "cat"] and ps.has_visual and ps.visual.shape == (2, 3, 32)
    assert torch.equal(ps.visual[1], bank.load_class("cat")["visual"])
    assert torch.allclose(ps.text, text.encode(["sofa, couch", "cat"], templates), atol=1e-6)


def test_mismatched_encoders_are_named(bank, towers):
    prompt, text, _, _ = towers
    with pytest.raises(
        BankError, match=r"built with another visual-prompt encoder \(fingerprint [0-9a-f]+, this model's is"
    ):
        bank.prompt_set(["cat"], SimpleNamespace(prompt_encoder=_perturbed(prompt), text_encoder=text))
    for attr, value in (("num_templates", 80), ("prompt_image_size", 320)):
        model = SimpleNamespace(prompt_encoder=prompt, text_encoder=text, **{attr: value})
        with pytest.raises(BankError, match=f"has {attr} .* but the model uses {value}"):
            bank.prompt_set(["cat"], model)
    with pytest.raises(BankError, match="built with another text tower"):
        bank.prompt_set(["cat"], prompt_encoder=prompt, text_tower=_perturbed(text))
    with pytest.raises(BankError, match="built with another visual-prompt encoder"):
        build_bank(bank, ["cat", "cow"], NoiseGenerator(), _perturbed(prompt), text, progress=False)
    with pytest.raises(BankError, match="another text tower"):
        add_exemplars(bank, {"cat": [Image.new("RGB", (8, 8))]}, prompt, _perturbed(text))


def test_missing_classes_are_listed_with_the_command_to_add_them(bank, towers):
    prompt, text, _, _ = towers
    with pytest.raises(
        BankError,
        match=r"lacks 2 of the 3 classes \(cow, horse\); add them with "
        r"'dpseg prompts build --checkpoint CKPT --vocab CLASS_LIST --generator noise --out .*bank'",
    ):
        bank.prompt_set(["cat", "cow", "horse"], prompt_encoder=prompt, text_tower=text)
    assert bank.missing(["cow", "dog", "horse "]) == ["cow", "horse"]


@pytest.mark.parametrize(
    "names, message",
    [
        ([], "class list is empty"),
        (["cat", "dog", "cat "], "names 'cat' more than once"),
        (["cat", " , "], "is empty"),
        ("cat", "not one string"),
        (
            ["red solid square", "red  solid square"],
            r"names 'red solid square' \(written 'red solid square', 'red  solid square': "
            r"names that differ only in case or spacing are one class\) more than once",
        ),
        (["cat", "Cat"], r"names 'cat' \(written 'cat', 'Cat'.*more than once"),
        (["sofa, couch", "Sofa,couch "], "names 'sofa, couch'.* more than once"),
    ],
)
def test_bad_class_lists(bank, towers, names, message):
    prompt, text, _, _ = towers
    with pytest.raises(InputError, match=message):
        bank.prompt_set(names, prompt_encoder=prompt, text_tower=text)
    with pytest.raises(InputError, match=message):
        build_bank(bank, names, NoiseGenerator(), prompt, text, progress=False)


def test_prompt_set_needs_something_to_check_against(bank):
    with pytest.raises(InputError, match="needs model= "):
        bank.prompt_set(["cat"])


def test_exemplar_folder_sets_averaged_visual_prompts(bank, towers, tmp_path):
    prompt, text, templates, size = towers
    rng = np.random.default_rng(0)
    for name, n in (("cat", 3), ("giraffe", 2)):
        (tmp_path / "ex" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "ex" / name / f"{i}.jpg")
    dog_before = bank.load_class("dog")
    found = find_exemplars(tmp_path / "ex")
    assert add_exemplars(bank, found, prompt, text) == ["cat", "giraffe"]
    v, stages = encode_prompt_images(prompt, [Image.open(p).convert("RGB") for p in found["cat"]], size)
    cat = bank.load_class("cat")
    assert cat["meta"]["source"] == "exemplar" and cat["seeds"].tolist() == [-1, -1, -1]
    assert torch.allclose(
        cat["visual"], F.normalize(v.mean(0), dim=-1).expand(3, -1), atol=1e-5
    )  # same for every template
    assert torch.allclose(cat["visual_stages"][1], stages[1].mean(0).expand(3, -1), atol=1e-5)
    assert torch.allclose(cat["text"], text.encode(["cat"], templates)[0], atol=1e-6)
    assert torch.equal(bank.load_class("dog")["visual"], dog_before["visual"])  # other classes untouched
    ps = bank.prompt_set(["giraffe", "dog"], prompt_encoder=prompt, text_tower=text)  # a new class joined the bank
    assert ps.visual.shape == (2, 3, 32)
    assert bank.info()["sources"] == {"exemplar": 2, "generated": 2}
    # rebuilding skips exemplar classes: user prompts are never overwritten by generated ones
    assert build_bank(bank, ["cat", "dog", "giraffe"], NoiseGenerator(), prompt, text, progress=False).built == []


def test_exemplar_errors(bank, towers, tmp_path):
    prompt, text, _, _ = towers
    (tmp_path / "ex" / "cat").mkdir(parents=True)
    (tmp_path / "ex" / "cat" / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot read image .*cat/bad\.jpg"):
        add_exemplars(bank, find_exemplars(tmp_path / "ex"), prompt, text)
    with pytest.raises(InputError, match="class 'cat' has no exemplar images"):
        add_exemplars(bank, {"cat": []}, prompt, text)
    with pytest.raises(InputError, match="exemplar class list names 'cat' more than once"):
        add_exemplars(bank, {"cat": [Image.new("RGB", (8, 8))], "cat ": [Image.new("RGB", (8, 8))]}, prompt, text)
    assert bank.load_class("cat")["meta"]["source"] == "generated"


def test_exemplar_only_bank_adopts_a_generator_later(towers, tmp_path):
    prompt, text, templates, size = towers
    key = make_key(prompt, text, templates, size)
    b = PromptBank.create(tmp_path / "ex-bank", key)
    add_exemplars(b, {"cat": [Image.new("RGB", (10, 10), (200, 10, 10))]}, prompt, text)
    b = PromptBank.create(tmp_path / "ex-bank", key, NoiseGenerator.identity, "noise", 3, 0)
    assert b.manifest["generator"] == "noise-v1" and PromptBank.open(b.root).manifest["seed"] == 3
    assert build_bank(b, ["cat", "dog"], NoiseGenerator(), prompt, text, progress=False).built == ["dog"]


def test_text_only_prompt_set(towers):
    _, text, templates, _ = towers
    ps = text_only_prompt_set(["cat", "sofa, couch"], text, templates)
    assert ps.visual is None and torch.allclose(ps.text, text.encode(["cat", "sofa, couch"], templates))
    with pytest.raises(InputError, match="more than once"):
        text_only_prompt_set(["cat", "cat"], text, templates)


def test_damaged_class_file_is_named_reported_and_rebuilt(bank, towers, pristine, capsys):
    prompt, text, _, _ = towers
    flip_tensor_bit(bank.class_path("dog"))
    with pytest.raises(
        BankError,
        match=r"the file of class 'dog' \(classes/dog-\w+\.safetensors\) is damaged: its content "
        r"does not match the SHA-256.*'dpseg prompts build --checkpoint CKPT --vocab CLASS_LIST "
        r"--generator noise --out .*bank'",
    ):
        bank.prompt_set(["cat", "dog"], prompt_encoder=prompt, text_tower=text)
    report = bank.verify()
    assert [f for f, _ in report["damaged"]] == [bank.class_path("dog").name] and len(report["ok"]) == 2
    from dpseg.commands import main

    assert main(["prompts", "info", str(bank.root)]) == 0
    assert re.search(r"integrity +2 class file\(s\) verified \(SHA-256\); 1 DAMAGED \(dog-", capsys.readouterr().out)
    assert main(["check", str(bank.root)]) == 2
    assert "DAMAGED" in capsys.readouterr().out
    rebuilt = build_bank(bank, ["cat", "dog"], NoiseGenerator(), prompt, text, progress=False)
    assert rebuilt.repaired == ["dog"] and rebuilt.built == ["dog"] and rebuilt.skipped == 1
    same = PromptBank.open(pristine).load_class("dog")  # seeded per (class, image): rebuilt bit for bit
    assert torch.equal(bank.load_class("dog")["visual"], same["visual"])
    assert main(["check", str(bank.root)]) == 0
    assert "4 file(s), 4 ok" in capsys.readouterr().out  # the manifest and 3 class files


def test_bank_written_before_hashes_loads_with_a_note(bank, towers, caplog, capsys):
    prompt, text, _, _ = towers
    for path in (bank.root / "classes").glob("*.safetensors"):
        strip_content_hash(path)
    with caplog.at_level("WARNING", logger="dpseg"):
        prompts = bank.prompt_set(["cat", "sofa,  couch"], prompt_encoder=prompt, text_tower=text)
    assert prompts.class_names == ["cat", "sofa,  couch"] and "class files have no content hash" in caplog.text
    assert len(bank.verify()["unverified"]) == 3
    from dpseg.commands import main

    assert main(["prompts", "info", str(bank.root)]) == 0
    assert "3 without a content hash (written by an older dpseg" in capsys.readouterr().out


def test_write_class_checks_every_prompt_tensor(bank):
    """A class file gets T, V and all three v_j with the manifest's shapes, or a one-line InputError."""
    entry = bank.load_class("cat")
    good = (entry["text"], entry["visual"], entry["visual_stages"])
    with pytest.raises(InputError, match=r"needs 3 stage prompt tensors \(v_2, v_3, v_4\), got 2"):
        bank.write_class("cat", *good[:2], good[2][:2], "test", [0])
    with pytest.raises(InputError, match=r"prompt tensor 'visual_stage3' of class 'cat' has shape"):
        bank.write_class("cat", *good[:2], [good[2][0], good[2][1][:, :1], good[2][2]], "test", [0])
    bank.write_class("cat", *good, "test", [0])
    assert torch.equal(bank.load_class("cat")["visual_stages"][1], good[2][1])


def test_resolved_bank_prompts_apply_the_models_visual_prompt_keep(bank, towers):
    """model.visual_prompt_keep reaches every path that resolves bank prompts (training, evaluation, segment)."""
    from dpseg.prompts.agreement import keep_agreeing_images
    from dpseg.prompts.resolve import resolve_prompts

    prompt, text, templates, _ = towers

    def resolved(keep):
        model = SimpleNamespace(
            prompt_encoder=prompt,
            text_encoder=text,
            needs_visual_prompts=True,
            prompt_type="dual",
            visual_prompt_keep=keep,
        )
        return resolve_prompts(model, templates, ["cat", "dog"], bank=str(bank.root)).prompts

    every, one = resolved(1.0), resolved(0.3)  # 3 templates: keep 1 image per class
    expected = keep_agreeing_images(every, 0.3)
    assert torch.equal(one.visual, expected.visual) and torch.equal(one.text, every.text)
    assert all(torch.equal(a, b) for a, b in zip(one.visual_stages, expected.visual_stages))
    assert not torch.equal(one.visual, every.visual) and torch.allclose(one.visual[:, 0], one.visual[:, 1])
