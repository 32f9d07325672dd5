"""Browser demo: upload an image, type classes, see the colour overlay and its legend (gradio).

  dpseg demo                                        the synthetic-world model of 'dpseg quickstart' (a toy)
  dpseg demo --checkpoint CKPT --bank BANK          your model and prompt bank
  dpseg demo --checkpoint CKPT --text-only          no bank: degraded for models trained with visual prompts

The server listens on 127.0.0.1 only (this machine); --share-on-lan listens on every interface so that other
machines of your network can use it (no login: anyone who can reach the port can). No public share link is ever
made. Uploads above --max-upload-mb and images above --max-megapixels are refused with a message.

An upload is taken as a file, not as an image: gradio never decodes it. It goes through the reader of
``dpseg segment`` (:func:`dpseg.image_io.read_image`), which checks the size from the header before decoding,
so a text file, a truncated image or a decompression bomb gets a one-line message on the page that names the
upload (never the server's temporary path) and the demo's own limit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dpseg.data.synthetic.render import random_scene
from dpseg.data.synthetic.world import all_classes, unseen_classes
from dpseg.errors import DPSegError, InputError
from dpseg.image_io import read_image
from dpseg.prompts.bank import PromptBank
from dpseg.quickstart import default_artifacts
from dpseg.segmenter import Segmenter
from dpseg.visualize import legend_html, overlay
from dpseg.vocab import parse_class_list

QUICKSTART_NOTE = ("**This is the toy model of `dpseg quickstart`**, trained on the built-in synthetic world: it knows "
                   "rendered shapes named *colour pattern shape* (e.g. `red striped star`), not real photos. The background "
                   "is not a class in that world, so pixels below probability 0.5 are left unlabelled. Start the demo "
                   "with `--checkpoint` to use a real model.")


@dataclass
class Limits:
    max_upload_mb: int = 20
    max_megapixels: float = 16.0
    max_classes: int = 100


def quickstart_artifacts() -> tuple[Path, Optional[Path]]:
    """(checkpoint dir, bank dir or None) of the last quickstart (``$DPSEG_CACHE/quickstart``, else
    ``.dpseg_cache/quickstart``); CheckpointError if there is none yet."""
    return default_artifacts()


def _example_classes(seg) -> str:
    """A few class names the bank holds, to pre-fill the classes box."""
    if seg.default_bank is None:
        return ""
    try:
        return "; ".join(m["class_name"] for m in PromptBank.open(seg.default_bank).classes()[:4])
    except DPSegError:
        return ""


def quickstart_example(folder: Path) -> Optional[list]:
    """[image path, classes] of a rendered synthetic scene (held-out classes first), for the quickstart page."""
    try:
        import numpy as np
        from PIL import Image


        scene = random_scene(unseen_classes() + all_classes()[:5], np.random.default_rng(7), size=192, num_objects=(3, 3))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(folder / "synthetic_scene.png")
        return [str(folder / "synthetic_scene.png"), "; ".join(pl.cls.name for pl in scene.placements)]
    except Exception as e:  # noqa: BLE001 - the example is a convenience; the demo works without it
        print(f"warning: no example scene ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def make_handler(seg, limits: Limits, text_only: bool = False):
    """The demo's function: (image file, classes text, refine, min score) -> (overlay, legend HTML, info)."""
    lock = threading.Lock()  # one Segmenter, one vocabulary at a time

    def segment(image_path: Optional[str], classes: str, refine: bool = True, min_score: float = 0.0):
        if not image_path:
            raise InputError("upload an image first")
        names = parse_class_list(classes or "")
        if len(names) > limits.max_classes:
            raise InputError(f"{len(names)} classes given; the demo accepts up to {limits.max_classes}")
        image = read_image(image_path, int(limits.max_megapixels * 1e6),  # the upload's name, not its server path
                           label=f"the uploaded file {Path(image_path).name}",
                           limit_hint="start the demo with a larger --max-megapixels")
        start = time.perf_counter()
        with lock:
            seg.set_vocabulary(names, text_only=text_only)
            result = seg.segment(image, refine=bool(refine) and seg.model.needs_visual_prompts, min_score=float(min_score))
            source = seg.prompt_source
        seconds = time.perf_counter() - start
        picture = overlay(image.permute(1, 2, 0).numpy(), result.labels, names, result.pixels, max_side=1600)
        h, w = result.size
        info = (f"{w}x{h} px, {len(names)} classes, {'two passes' if result.refined else 'one pass'}, "
                f"{seconds:.2f} s on {seg.device}. Prompts: {source}.")
        return picture, legend_html(names, result.pixels, result.labels.size), info

    return segment


def build_app(seg, limits: Limits = Limits(), model_note: str = "", text_only: bool = False,
              example: Optional[list] = None, min_score: float = 0.0):
    """The gradio Blocks app around a Segmenter (not launched); ``example`` = [image path, classes]."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    handler = make_handler(seg, limits, text_only)

    def on_click(image_path, classes, refine, min_score):
        try:
            return handler(image_path, classes, refine, min_score)
        except DPSegError as e:
            raise gr.Error(str(e), print_exception=False) from None

    can_refine = seg.model.needs_visual_prompts
    with gr.Blocks(title="dpseg demo", delete_cache=(3600, 3600)) as app:
        gr.Markdown("## DPSeg: segment an image into the classes you name\n" + model_note, elem_id="dpseg-note")
        with gr.Row():
            with gr.Column():
                image = gr.File(label="Image (JPEG, PNG, WebP, BMP, TIFF, GIF)", type="filepath", file_count="single",
                                elem_id="dpseg-image")  # a file, not gr.Image: dpseg's reader decodes it (module doc)
                classes = gr.Textbox(label="Classes (commas between classes; or ';' between classes and commas "
                                     "between synonyms)", value=_example_classes(seg), elem_id="dpseg-classes")
                with gr.Row():
                    refine = gr.Checkbox(value=can_refine and seg.refine_default, interactive=can_refine,
                                         label="two-pass prompt refinement")
                    threshold = gr.Slider(0.0, 0.95, value=min_score, step=0.05, label="leave pixels below this "
                                          "probability unlabelled")
                run = gr.Button("Segment", variant="primary", elem_id="dpseg-run")
                if example:
                    gr.Examples([example], [image, classes], label="Example (click it, then Segment)")
            with gr.Column():
                result = gr.Image(label="Overlay", type="pil", format="png", interactive=False, elem_id="dpseg-overlay")
                legend = gr.HTML(elem_id="dpseg-legend")
                info = gr.Markdown(elem_id="dpseg-info")
        inputs, outputs = [image, classes, refine, threshold], [result, legend, info]
        run.click(on_click, inputs, outputs, api_name="segment", concurrency_limit=1)
        classes.submit(on_click, inputs, outputs, api_name=False, concurrency_limit=1)
    app.queue(max_size=32)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--checkpoint", help="checkpoint folder or hub id (default: the quickstart model)")
    parser.add_argument("--bank", help="prompt bank folder (default: the checkpoint's prompts.bank / the quickstart bank)")
    parser.add_argument("--text-only", action="store_true", help="run without visual prompts (degraded for models "
                        "trained with them)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share-on-lan", action="store_true", help="listen on all interfaces (0.0.0.0)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--max-upload-mb", type=int, default=Limits.max_upload_mb, help="largest upload accepted")
    parser.add_argument("--max-megapixels", type=float, default=Limits.max_megapixels, help="largest image accepted")
    parser.add_argument("--max-classes", type=int, default=Limits.max_classes, help="most classes per request")


def load_segmenter(checkpoint: Optional[str], bank: Optional[str], text_only: bool, device: Optional[str] = None):
    """(Segmenter, page note): the given checkpoint, or the quickstart model with its bank (the note says so)."""
    if text_only and bank:
        raise InputError("--text-only cannot be combined with --bank")
    note = ""
    if checkpoint is None:
        checkpoint, qs_bank = quickstart_artifacts()
        if not text_only:
            bank = bank or (None if qs_bank is None else str(qs_bank))
        note = QUICKSTART_NOTE
    seg = Segmenter.from_pretrained(checkpoint, device=device, bank=bank)
    if text_only:
        seg.default_bank = None
    elif seg.default_bank is None and seg.model.needs_visual_prompts:
        raise InputError(f"checkpoint {checkpoint} was trained with visual prompts; give --bank BANK (dpseg prompts build) "
                         "or accept a degraded text-only mode with --text-only")
    source = f"prompt bank `{seg.default_bank}`" if seg.default_bank else "text prompts only"
    return seg, f"{note}\n\nModel: `{checkpoint}`; {source}; device {seg.device}."


def run(args: argparse.Namespace) -> int:
    for key in ("max_upload_mb", "max_megapixels", "max_classes"):
        if getattr(args, key) <= 0:
            raise InputError(f"--{key.replace('_', '-')} must be positive")
    host = "0.0.0.0" if args.share_on_lan and args.host == "127.0.0.1" else args.host
    seg, note = load_segmenter(args.checkpoint, args.bank, args.text_only, args.device)
    limits = Limits(args.max_upload_mb, args.max_megapixels, args.max_classes)
    quickstart = args.checkpoint is None
    example = quickstart_example(Path(tempfile.mkdtemp(prefix="dpseg-demo-"))) if quickstart else None
    app = build_app(seg, limits, note, args.text_only, example, 0.5 if quickstart else 0.0)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach port {args.port} can use this demo", file=sys.stderr)
    try:
        app.launch(server_name=host, server_port=args.port, share=False, max_file_size=f"{args.max_upload_mb}mb",
                   show_error=True, ssr_mode=False, inbrowser=False)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{args.port} ({str(e).splitlines()[0]}); pick another --port") from None
    return 0
