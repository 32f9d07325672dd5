"""DDP through the real launcher: `torchrun --nproc_per_node=2 -m dpseg train` on CPU (gloo).

What holds, and is checked here:
* both ranks end every checkpointed step with bit-identical weights (the engine itself compares the replicas'
  fingerprints at each checkpoint and stops if they differ; the test reads them back);
* the 2-process run equals a 1-process run with the same global batch: same images and augmentations at every
  step (the sampler and the position-seeded augmentation make this exact), same losses and weights up to float
  rounding (DDP averages per-rank mean gradients, a different summation order than one batch). This needs the
  loss to be a plain mean over equal-sized per-rank batches (``train.loss_ignore=negative``, the default; with
  ``mask`` the per-rank means are weighted differently) and no per-rank randomness in the model (drop path 0, as
  in the tiny preset).
"""

import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from test_train import make_dataset, records, text_only

from dpseg.engine.resume import list_checkpoints, load_checkpoint
from dpseg.engine.train import train
from dpseg.weights import state_fingerprint

SETTINGS = ["train.iterations=3", "train.checkpoint_every=2", "train.batch_size=2", "data.num_workers=0"]


def test_two_processes_keep_equal_replicas_and_match_one_process(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=4)
    ddp_out = tmp_path / "ddp"
    sets = [
        f"data.train_dataset={data}",
        "model.prompt_type=text",
        "model.guidance=upsampled",
        "train.eval_every=0",
        f"train.output_dir={ddp_out}",
        "train.tensorboard=false",
        "train.log_every=1",
        *SETTINGS,
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dpseg",
        "train",
        "--preset",
        "dpseg-tiny",
        "--no-progress",
    ]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "cpu x 2 process(es)" in run.stdout and "1 per process x 2 = 2 (effective)" in run.stdout
    assert run.stdout.count("training run") == 1  # only rank 0 reports

    checkpoints = list_checkpoints(ddp_out)
    assert [p.name for p in checkpoints] == ["step-00000002", "step-00000003"]
    for path in checkpoints:
        weights, state = load_checkpoint(path)
        assert len(state["rng"]) == 2 and len(state["replicas"]) == 2
        assert state["replicas"][0] == state["replicas"][1] == state_fingerprint(weights)

    single = train(text_only(tmp_path / "one", data, *SETTINGS), progress=False)
    assert single["step"] == 3
    many, one = (
        load_file(ddp_out / "final" / "model.safetensors"),
        load_file(tmp_path / "one" / "final" / "model.safetensors"),
    )
    assert many.keys() == one.keys()
    worst = max((many[k].float() - one[k].float()).abs().max().item() for k in many)
    assert worst < 1e-5, worst
    moved = max((one[k].float() - v.float()).abs().max().item() for k, v in load_checkpoint(checkpoints[0])[0].items())
    assert moved > 10 * worst  # the runs did train: step 2 -> 3 moves the weights far more than the mismatch
    ddp_losses, one_losses = [r["loss"] for r in records(ddp_out)], [r["loss"] for r in records(tmp_path / "one")]
    assert ddp_losses == pytest.approx(one_losses, rel=1e-5, abs=1e-6)
