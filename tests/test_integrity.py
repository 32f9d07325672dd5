"""Content hashes (issue 17): every safetensors file dpseg writes is verified on load; damaged files are named with
the fix; old files without hashes still load with a note; resume skips damaged checkpoints; ``dpseg check``."""

import logging
import shutil
import zipfile

import pytest
import torch
from helpers import flip_tensor_bit, strip_content_hash, tiny_model, train_state
from safetensors import safe_open
from safetensors.torch import load_file

from dpseg.checkpoint import load_model, save_model
from dpseg.commands import main
from dpseg.engine.resume import load_checkpoint, resume_target, save_checkpoint
from dpseg.errors import CheckpointError
from dpseg.segmenter import Segmenter
from dpseg.weights import HASH_KEY, safetensors_integrity, save_safetensors


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    model, cfg = tiny
    return save_model(model, cfg, tmp_path_factory.mktemp("pristine") / "ckpt")


@pytest.fixture
def ckpt(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "ckpt")


def _flip_state_byte(path):
    """Flip a bit inside the tensor data of state.pt (same size; torch.load itself does not notice)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 8)
    local = info.header_offset  # local file header: 30 bytes, then the name and the (local) extra field
    start = (
        local
        + 30
        + int.from_bytes(data[local + 26 : local + 28], "little")
        + int.from_bytes(data[local + 28 : local + 30], "little")
    )
    data[start + info.file_size // 2] ^= 0x20
    path.write_bytes(data)
    torch.load(path, weights_only=True)  # still loads without complaint: only the hash can tell


# ------------------------------------------------------------------------------------------- the format


def test_written_files_carry_a_hash_that_a_flipped_bit_breaks(tmp_path):
    path = save_safetensors({"a": torch.arange(64.0), "b": torch.ones(4, 4)}, tmp_path / "w.safetensors", {"step": 3})
    status, digest = safetensors_integrity(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert status == "ok" and meta[HASH_KEY] == digest and meta["step"] == "3"
    assert set(load_file(path)) == {"a", "b"}  # still a plain safetensors file for every other reader
    flip_tensor_bit(path, "a")
    assert safetensors_integrity(path)[0] == "damaged"
    path = save_safetensors({"a": torch.arange(64.0)}, tmp_path / "m.safetensors", {"step": 3})
    path.write_bytes(path.read_bytes().replace(b'"step":"3"', b'"step":"4"'))  # a flip in the header's metadata
    assert safetensors_integrity(path)[0] == "damaged"
    strip_content_hash(path)
    assert safetensors_integrity(path)[0] == "unverified"


def test_damaged_model_weights_are_named_with_the_fix(ckpt, capsys):
    flip_tensor_bit(ckpt / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors is damaged: its content does not match the SHA-256 .*"
        r"restore it from a backup or export the model again",
    ):
        load_model(ckpt)
    with pytest.raises(CheckpointError, match="is damaged"):
        Segmenter.from_pretrained(ckpt, device="cpu")
    assert main(["eval", str(ckpt), "--text-only", "--datasets", "a150"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is damaged" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_checkpoint_without_a_hash_loads_with_a_note(ckpt, tiny, caplog):
    strip_content_hash(ckpt / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="dpseg"):
        model, _ = load_model(ckpt)
    assert "has no content hash (written by an older dpseg)" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny[0].state_dict().values()))


# --------------------------------------------------------------------------------- training checkpoints


def test_damaged_training_checkpoints_are_refused(tiny, tmp_path):
    model, cfg = tiny
    a = save_checkpoint(tmp_path / "a", 1, model, train_state(1), cfg)
    flip_tensor_bit(a / "trainable.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"step-00000001 is damaged: trainable.safetensors its content does not "
        r"match.*--resume RUN_DIR continues from the newest intact checkpoint",
    ):
        load_checkpoint(a)
    b = save_checkpoint(tmp_path / "b", 1, model, train_state(1), cfg)
    _flip_state_byte(b / "state.pt")
    with pytest.raises(CheckpointError, match="damaged: state.pt its content does not match"):
        load_checkpoint(b)


def test_old_training_checkpoints_load_with_a_note_and_their_zip_crcs_checked(tiny, tmp_path, caplog):
    model, cfg = tiny
    path = save_checkpoint(tmp_path, 1, model, train_state(1), cfg)
    strip_content_hash(path / "trainable.safetensors")
    with caplog.at_level(logging.WARNING, logger="dpseg"):
        _, state = load_checkpoint(path)
    assert state["step"] == 1 and "no content hash" in caplog.text
    _flip_state_byte(path / "state.pt")
    with pytest.raises(CheckpointError, match="state.pt member .* fails its CRC check"):
        load_checkpoint(path)


def test_resume_falls_back_to_the_newest_intact_checkpoint(tiny, tmp_path):
    model, cfg = tiny
    steps = [save_checkpoint(tmp_path, s, model, train_state(s), cfg) for s in (1, 2, 3)]
    flip_tensor_bit(steps[2] / "trainable.safetensors")
    (steps[1] / "state.pt").write_bytes((steps[1] / "state.pt").read_bytes()[:100])  # truncated
    notes = []
    assert resume_target(tmp_path, "auto", notes) == steps[0]
    assert len(notes) == 2 and "skipped damaged checkpoint" in notes[0] and "step-00000003" in notes[0]
    assert "trainable.safetensors its content does not match" in notes[0]
    assert "step-00000002" in notes[1] and "state.pt its content does not match" in notes[1]
    assert resume_target(None, str(tmp_path)) == steps[0]  # --resume RUN_DIR: the same choice
    with pytest.raises(
        CheckpointError,
        match=r"--resume .*step-00000003: the checkpoint is damaged .*pass the run "
        r"directory",
    ):
        resume_target(None, str(steps[2]))
    flip_tensor_bit(steps[0] / "trainable.safetensors")
    with pytest.raises(CheckpointError, match="every checkpoint of .* is damaged"):
        resume_target(tmp_path, "auto")


def test_train_resume_says_which_checkpoint_it_skipped(tmp_path, capsys):
    from test_train import make_dataset, records, text_only

    from dpseg.engine.resume import list_checkpoints
    from dpseg.engine.train import train

    data = make_dataset(tmp_path / "data", n_train=2, n_val=1)
    out = tmp_path / "run"
    train(
        text_only(out, data, "train.iterations=2", "train.checkpoint_every=1", "train.keep_checkpoints=0"),
        progress=False,
    )
    newest = list_checkpoints(out)[-1]
    flip_tensor_bit(newest / "trainable.safetensors")
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress", "--set", "train.iterations=3"]) == 0
    text = capsys.readouterr().out
    assert f"skipped damaged checkpoint {newest}: trainable.safetensors its content does not match" in text
    assert "resuming at step 1 from" in text and [r["step"] for r in records(out)] == [1, 2, 3]


# ------------------------------------------------------------------------------------------ dpseg check


def test_check_reports_checkpoint_folders_runs_and_files(tiny, ckpt, tmp_path, capsys):
    model, cfg = tiny
    assert main(["check", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "ok          " in out and "model.safetensors" in out and "0 damaged" in out
    run = tmp_path / "run"
    steps = [save_checkpoint(run, s, model, train_state(s), cfg) for s in (1, 2)]
    shutil.copytree(ckpt, run / "final")
    assert main(["check", str(run)]) == 0
    assert "training run): 8 file(s), 8 ok" in capsys.readouterr().out  # 2 x (trainable, state, config) + final's 2
    flip_tensor_bit(steps[1] / "trainable.safetensors")
    assert main(["check", str(run)]) == 2
    captured = capsys.readouterr()
    assert f"DAMAGED     {steps[1] / 'trainable.safetensors'}: its content does not match" in captured.out
    assert "1 damaged" in captured.err
    assert main(["check", str(steps[0])]) == 0 and main(["check", str(steps[1])]) == 2
    capsys.readouterr()
    strip_content_hash(ckpt / "model.safetensors")
    assert main(["check", str(ckpt / "model.safetensors")]) == 0
    assert "unverified  " in capsys.readouterr().out
    (ckpt / "config.json").write_text("{")
    assert main(["check", str(ckpt)]) == 2
    assert "config.json: unreadable" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "is not a dpseg checkpoint folder, training run or checkpoint, or prompt bank"),
        (lambda p: p / "nope", "does not exist"),
        (lambda p: (p / "x.txt").write_text("x") and p / "x.txt", "is not a dpseg file"),
    ],
)
def test_check_refuses_what_it_cannot_check(tmp_path, capsys, make, message):
    assert main(["check", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
