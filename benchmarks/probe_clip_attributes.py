"""Can an image tower carry an object's attributes in its *dense* embedding? A supervised probe (method study §1).

    python benchmarks/probe_clip_attributes.py                                  # the synthetic tower: stride 32
    python benchmarks/probe_clip_attributes.py --output-stride 16 --steps 1000 --layer-scale 1

The tiny CLIP's tower (`dpseg_convnext_nano`; `dpseg_convnext_nano_os16` for stride 16) plus a CLIP-like head
(LayerNorm + linear to 64 dims) is trained from scratch, with no text, to predict each object's colour, pattern and
shape from the embedding the segmenter's cost volume reads: the cover-weighted mean of the per-cell L2-normalised
dense embedding over the cells the object fills (as in the tiny CLIP's pretraining). Test: objects of scenes from
other seeds. ``--output-stride 16`` takes the tower whose last stage is dilated instead of downsampled (timm's
``output_stride``), so the dense grid of a 128-px scene is 8x8 instead of 4x4. ``--objects 1`` draws one object per
scene; ``--pool global`` replaces the cover-weighted mean by global average pooling (sensible with one object).

One seed per call: a feasibility check, not a claim about the method. Prints the three test accuracies (chance:
colour 1/5, pattern 1/3, shape 1/5) and seconds per step.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import open_clip
import timm
import torch
import torch.nn.functional as F
from torch import nn

from dpseg.data.synthetic.render import random_scene
from dpseg.data.synthetic.world import COLOURS, PATTERNS, SHAPES, seen_classes
from dpseg.model import towers as _towers  # noqa: F401 - registers the dpseg_convnext_* trunks with timm
from dpseg.quickstart.clip_data import MAX_OBJECTS, object_cover

TOWERS = {32: "dpseg_convnext_nano", 16: "dpseg_convnext_nano_os16"}  # output stride -> the tiny CLIP's trunk


def scenes(n: int, seed: int, stride: int, objects: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(n, 3, 128, 128) float images, (n, O, h, w) object covers of the stride cells, (n, O, 3) attributes."""
    rng = np.random.default_rng([seed, 31])
    classes = seen_classes()
    images, covers, attrs = [], [], []
    for _ in range(n):
        scene = random_scene(classes, rng, size=128, num_objects=(objects, objects) if objects else (2, MAX_OBJECTS))
        cover, a = object_cover(scene.label, classes, stride=stride)
        images.append(scene.image)
        covers.append(cover)
        attrs.append(a)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # (n, H, W, 3) -> (n, 3, H, W)
    return x, torch.from_numpy(np.stack(covers)), np.stack(attrs)


class Probe(nn.Module):
    def __init__(self, output_stride: int, layer_scale: float):
        super().__init__()
        self.trunk = timm.create_model(TOWERS[output_stride], ls_init_value=layer_scale, num_classes=0, global_pool="")
        self.norm, self.proj = nn.LayerNorm(256), nn.Linear(256, 64)
        self.heads = nn.ModuleList(nn.Linear(64, n) for n in (len(COLOURS), len(PATTERNS), len(SHAPES)))
        self.register_buffer("mean", torch.tensor(open_clip.constants.OPENAI_DATASET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(open_clip.constants.OPENAI_DATASET_STD).view(1, 3, 1, 1))

    def objects(self, x: torch.Tensor, cover: torch.Tensor, pool: str) -> torch.Tensor:
        """(n, 3, H, W) images, (n, O, h, w) covers -> (n, O, 64) L2-normalised object embeddings."""
        f = self.trunk.forward_features((x - self.mean) / self.std)  # (n, 256, h, w)
        if pool == "global":
            g = F.normalize(self.proj(self.norm(f.mean(dim=(2, 3)))), dim=-1)  # (n, 64)
            return g[:, None].expand(-1, cover.shape[1], -1)  # (n, O, 64): every slot the same
        e = F.normalize(self.proj(self.norm(f.permute(0, 2, 3, 1))), dim=-1)  # (n, h, w, 64)
        summed = torch.einsum("nohw,nhwd->nod", cover, e)  # (n, O, 64)
        return F.normalize(summed / cover.sum(dim=(2, 3)).clamp(min=1e-6)[..., None], dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output-stride", type=int, default=32, choices=(16, 32))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--layer-scale", type=float, default=1e-6, help="ConvNeXt layer-scale init (timm default 1e-6)")
    ap.add_argument("--objects", type=int, default=0, help="objects per scene (0: 2-4, as the world draws them)")
    ap.add_argument("--pool", choices=("cover", "global"), default="cover")
    ap.add_argument("--train-scenes", type=int, default=2000)
    ap.add_argument("--test-scenes", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x_tr, c_tr, a_tr = scenes(args.train_scenes, 1, args.output_stride, args.objects)
    x_te, c_te, a_te = scenes(args.test_scenes, 2, args.output_stride, args.objects)
    torch.manual_seed(args.seed)
    probe = Probe(args.output_stride, args.layer_scale)
    opt = torch.optim.AdamW(probe.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = max(1, args.steps // 30)
    start = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        i = torch.randint(0, len(x_tr), (args.batch,))
        x, cover, attrs = x_tr[i], c_tr[i], a_tr[i.numpy()]
        if torch.rand(()) < 0.5:  # upright shapes are mirror-symmetric
            x, cover = x.flip(-1), cover.flip(-1)
        present = attrs[..., 0] >= 0  # (n, O)
        emb = probe.objects(x, cover, args.pool)[torch.from_numpy(present)]  # (P, 64)
        target = torch.from_numpy(attrs[present])  # (P, 3)
        loss = sum(F.cross_entropy(10 * head(emb), target[:, j]) for j, head in enumerate(probe.heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = (time.time() - start) / args.steps
    correct, total = np.zeros(3), 0
    with torch.no_grad():
        for k in range(0, len(x_te), 50):
            present = a_te[k : k + 50, :, 0] >= 0
            emb = probe.objects(x_te[k : k + 50], c_te[k : k + 50], args.pool)[torch.from_numpy(present)]
            target = torch.from_numpy(a_te[k : k + 50][present])
            for j, head in enumerate(probe.heads):
                correct[j] += (head(emb).argmax(1) == target[:, j]).sum().item()
            total += len(target)
    acc = dict(zip(("colour", "pattern", "shape"), (100 * correct / total).round(1).tolist()))
    print(json.dumps({**vars(args), "test_objects": total, "accuracy_%": acc, "seconds_per_step": round(seconds, 3)}))


if __name__ == "__main__":
    main()
