"""Training-engine helpers: optimizer groups, schedule, sampler, position-seeded data, checkpoints, RNG, logs."""

import copy
import itertools
import json
import random

import numpy as np
import pytest
import torch
from helpers import train_state

from dpseg.build import build_model
from dpseg.engine.data import PositionSeededDataset
from dpseg.engine.distributed import ShardedInfiniteSampler, pick_device
from dpseg.engine.logging import TrainLogger
from dpseg.engine.optim import build_optimizer, lr_factor, param_groups
from dpseg.engine.resume import (
    config_changes,
    list_checkpoints,
    load_checkpoint,
    load_trainable,
    prune_checkpoints,
    resume_target,
    save_checkpoint,
    trainable_state,
)
from dpseg.engine.rng import capture_rng, restore_rng
from dpseg.errors import CheckpointError, ConfigError
from dpseg.evaluation.runtime import resolve_precision


@pytest.fixture(scope="module")
def tiny():
    from dpseg.config import build_config

    cfg = build_config("dpseg-tiny")
    torch.manual_seed(0)
    return build_model(cfg), cfg


# ------------------------------------------------------------------------------------------ optimizer


def test_param_groups_follow_the_peers_recipe(tiny):
    model, cfg = tiny
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: g for g in param_groups(model, cfg.train)}
    assert set(groups) == {"image_encoder/decay", "image_encoder/no_decay", "decoder/decay", "decoder/no_decay"}
    members = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    everything = set().union(*members.values())
    assert everything == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("prompt_encoder.", "text_encoder.")) for n in everything)
    no_decay = members["image_encoder/no_decay"] | members["decoder/no_decay"]
    assert "image_encoder.trunk.stem.1.weight" in no_decay  # LayerNorm2d after the stem conv
    assert "image_encoder.trunk.stem.0.weight" in members["image_encoder/decay"]  # the stem conv
    assert all(n in no_decay for n in everything if n.endswith(".bias"))
    norm_weights = [
        f"{m}.weight"
        for m, mod in model.named_modules()
        if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and not m.startswith(("prompt", "text"))
    ]
    assert norm_weights and all(n in no_decay for n in norm_weights)
    assert groups["image_encoder/decay"]["lr_mult"] == cfg.train.encoder_lr_mult == 0.01
    assert groups["decoder/decay"]["lr_mult"] == 1.0
    assert groups["decoder/no_decay"]["weight_decay"] == 0.0 and groups["decoder/decay"]["weight_decay"] == 1e-4


def test_weight_decay_only_touches_the_decay_groups(tiny):
    cfg = copy.deepcopy(tiny[1])
    model = build_model(cfg)  # a fresh copy: this test moves the weights
    cfg.train.weight_decay = 0.5
    opt = build_optimizer(model, cfg.train, torch.device("cpu"))
    assert [g["lr"] for g in opt.param_groups] == [cfg.train.lr * g["lr_mult"] for g in opt.param_groups]
    before = {id(p): p.detach().clone() for g in opt.param_groups for p in g["params"]}
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)  # Adam's own term is 0: only decoupled weight decay moves weights
    opt.step()
    for g in opt.param_groups:
        for p in g["params"]:
            expect = before[id(p)] * (1 - g["lr"] * g["weight_decay"])
            assert torch.allclose(p, expect, rtol=0, atol=1e-12), g["name"]


def test_cosine_schedule_and_warmup():
    T = 100
    assert lr_factor(0, T) == 1.0 and lr_factor(50, T) == pytest.approx(0.5) and lr_factor(T, T) == pytest.approx(0.0)
    values = [lr_factor(s, T) for s in range(T + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_factor(0, T, warmup=10) == pytest.approx(0.001)
    assert lr_factor(5, T, warmup=10) == pytest.approx((0.001 * 0.5 + 0.5) * lr_factor(5, T))
    assert lr_factor(10, T, warmup=10) == lr_factor(10, T)


def test_precision_and_device_choices():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="train.device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is available"):
            pick_device("cuda")


# ------------------------------------------------------------------------------------------------ data


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sharded_sampler_partitions_the_one_process_stream():
    N, B, steps = 5, 4, 6
    single = _take(ShardedInfiniteSampler(N, B, seed=3), B * steps)
    ranks = [_take(ShardedInfiniteSampler(N, B, r, 2, seed=3), B // 2 * steps) for r in range(2)]
    for s in range(steps):  # global batch s = rank 0's slice then rank 1's slice
        assert single[s * B : (s + 1) * B] == ranks[0][s * 2 : (s + 1) * 2] + ranks[1][s * 2 : (s + 1) * 2]
    for epoch in range(4):  # every epoch visits each image once, in a new order
        assert sorted(i for i, _ in single[epoch * N : (epoch + 1) * N]) == list(range(N))
    assert [i for i, _ in single[:N]] != [i for i, _ in single[N : 2 * N]]
    assert [p for _, p in single] == list(range(B * steps))
    assert _take(ShardedInfiniteSampler(N, B, seed=3, start=8), 8) == single[8:16]  # resume = start position
    assert _take(ShardedInfiniteSampler(N, B, seed=4), 10) != single[:10]
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        ShardedInfiniteSampler(N, 3, 0, 2)


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {
            "image": torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g),
            "label": torch.randint(-1, 4, (40, 48), generator=g),
            "name": str(i),
        }


def test_augmentation_is_seeded_by_sample_position(tiny_cfg):
    from dpseg.data.transforms import build_train_transform

    data = PositionSeededDataset(_Items(), build_train_transform(tiny_cfg.data), seed=0)
    torch.manual_seed(123)
    a = data[(1, 7)]
    torch.manual_seed(456)  # the global RNG plays no part
    b = data[(1, 7)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["image"].shape == (3, 64, 64)
    others = [data[(1, p)]["image"] for p in range(8, 12)]
    assert any(not torch.equal(a["image"], o) for o in others)


# ----------------------------------------------------------------------------------------- checkpoints


def test_checkpoints_are_atomic_listed_loaded_and_pruned(tiny, tmp_path):
    model, cfg = tiny
    (tmp_path / "checkpoints" / ".step-00000009.x.tmp").mkdir(parents=True)  # a crash mid-write
    (tmp_path / "checkpoints" / "step-00000010").mkdir()  # incomplete: no state.pt
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, model, train_state(step), cfg)
    save_checkpoint(tmp_path, 4, model, train_state(4), cfg)  # re-written after resuming from an older one
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004", "step-00000006"]
    weights, state = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert state["step"] == 6 and state["consumed_samples"] == 12
    assert not any(k.startswith(("prompt_encoder.", "text_encoder.")) for k in weights)
    assert all(torch.equal(weights[k], v) for k, v in trainable_state(model).items())
    removed = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step-00000002"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000004",
        "step-00000006",
        "step-00000010",
    ]


def _strip_hashes(path):
    """Re-write a checkpoint's trainable.safetensors the way dpseg did before content hashes."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(path / "trainable.safetensors"), path / "trainable.safetensors", metadata={"step": "1"})


def test_checkpoint_loading_rejects_bad_files(tiny, tmp_path):
    model, cfg = tiny
    path = save_checkpoint(tmp_path, 1, model, train_state(1), cfg)
    weights, _ = load_checkpoint(path)
    weights.pop(sorted(weights)[0])
    with pytest.raises(CheckpointError, match="missing keys"):
        load_trainable(model, weights, str(path))
    torch.save({"format": "dpseg-train-state", "version": 1, "evil": _Items()}, path / "state.pt")
    with pytest.raises(CheckpointError, match="state.pt its content does not match"):  # the stored hash catches it
        load_checkpoint(path)
    _strip_hashes(path)  # as an older checkpoint (or an attacker who also rewrote the hash)
    with pytest.raises(CheckpointError, match="cannot read"):  # weights_only refuses arbitrary objects
        load_checkpoint(path)
    (path / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(tmp_path)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    torch.save({"rng": capture_rng()}, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_resume_target_and_config_changes(tiny, tmp_path):
    model, cfg = tiny
    assert resume_target(tmp_path, None) is None and resume_target(tmp_path, "auto") is None
    with pytest.raises(CheckpointError, match="no such run directory"):
        resume_target(tmp_path, str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resume_target(tmp_path, str(tmp_path))
    path = save_checkpoint(tmp_path, 3, model, train_state(3), cfg)
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume"):
        resume_target(tmp_path, None)
    assert resume_target(tmp_path, "auto") == path == resume_target(tmp_path, str(path))
    new = cfg.to_dict()
    new["train"] = {**new["train"], "iterations": 99, "output_dir": "elsewhere"}
    assert config_changes(cfg.to_dict(), new) == ["train.iterations: 10 -> 99"]


# ---------------------------------------------------------------------------------------------- logging


def test_logs_drop_records_of_an_interrupted_attempt(tmp_path):
    log = TrainLogger(tmp_path, True, 0, 10, tensorboard=False, progress=False)
    for step in range(1, 5):
        log.train(step, loss=1.0 / step, lr=0.1, grad_norm=float("nan"), it_per_s=2.0)
    log.eval(
        4,
        "val",
        {
            "pass1": {"mIoU": 1.0, "fwIoU": 2.0, "mAcc": 3.0, "pAcc": 4.0, "per_class_IoU": {}},
            "num_images": 1,
            "seconds": 0.1,
        },
    )
    log.close()
    TrainLogger(tmp_path, True, 2, 10, tensorboard=False, progress=False).close()  # resumed at step 2
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[0]["grad_norm"] is None
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,grad_norm,it_per_s,elapsed_s" and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert TrainLogger(tmp_path, False, 0, 10).bar.style == "off"  # other ranks stay silent, on a terminal too
