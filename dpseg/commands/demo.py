"""Browser demo: upload an image, type classes, see the colour overlay and its legend (gradio).

  dpseg demo                                        the synthetic-world model of 'dpseg quickstart' (a toy)
  dpseg demo --checkpoint CKPT --bank BANK          your model and prompt bank
  dpseg demo --checkpoint CKPT --text-only          no bank: degraded for models trained with visual prompts

The server listens on 127.0.0.1 only (this machine); --share-on-lan listens on every interface so that other
machines of your network can use it (no login: anyone who can reach the port can). No public share link is ever
made. Uploads above --max-upload-mb and images above --max-megapixels are refused with a message.

The page shows the overlay (its opacity has a slider), the legend with area shares and the unlabelled share, and
offers the label map (palette PNG, as `dpseg segment` writes it) and a JSON summary for download. Pixels below the
threshold slider stay unlabelled; it starts at the checkpoint's eval.min_score, chosen on its validation split
(dpseg calibrate). "Text prompts only" runs without visual prompts (degraded for models trained with them). A
request that fails clears the previous result, so nothing stale stays on screen.

Every request passes :class:`dpseg.http_guard.RequestGuard` first (:func:`guard_options`): requests from another
origin (a web page driving the demo from the same browser) and, on loopback, addressed to another host name are
refused; every request body is capped (uploads at --max-upload-mb, everything else at 1 MB).

An upload is taken as a file, not as an image: gradio never decodes it. It goes through the reader of
``dpseg segment`` (:func:`dpseg.image_io.read_image`), which checks the size from the header before decoding,
so a text file, a truncated image or a decompression bomb gets a one-line message on the page that names the
upload (never the server's temporary path) and the demo's own limit.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from dpseg.atomic import atomic_write_json
from dpseg.commands.toy import TOY_NOTE, is_toy, outside_world_warning
from dpseg.config import check_number
from dpseg.config_schema import NumberRule
from dpseg.data.synthetic.render import random_scene
from dpseg.data.synthetic.world import all_classes, unseen_classes
from dpseg.errors import DPSegError, InputError
from dpseg.http_guard import LOOPBACK_HOSTS, RequestGuard
from dpseg.image_io import label_image, read_image, save_atomic
from dpseg.prompts.bank import PromptBank
from dpseg.quickstart import default_artifacts
from dpseg.segmenter import Segmenter
from dpseg.visualize import legend_html, overlay
from dpseg.vocab import parse_class_list

QUICKSTART_NOTE = (
    "**This is the toy model of `dpseg quickstart`**, trained on the built-in synthetic world: it "
    "knows rendered shapes named *colour pattern shape* (e.g. `red striped star`), not real photos; "
    "other class names get a warning. The background is not a class in that world, so pixels below the "
    "threshold (chosen on the world's validation scenes) stay unlabelled. Start the demo with "
    "`--checkpoint` to use a real model."
)
RESULTS_KEPT = 16  # downloadable results kept on disk (older ones are deleted)


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

        scene = random_scene(
            unseen_classes() + all_classes()[:5], np.random.default_rng(7), size=192, num_objects=(3, 3)
        )
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(folder / "synthetic_scene.png")
        return [str(folder / "synthetic_scene.png"), "; ".join(pl.cls.name for pl in scene.placements)]
    except Exception as e:  # noqa: BLE001 - the example is a convenience; the demo works without it
        print(f"warning: no example scene ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def make_handler(seg, limits: Limits, text_only: bool = False, results_dir: Optional[Path] = None):
    """The demo's function: (image file, classes text, refine, min score, opacity, text only) -> (overlay, legend
    HTML, info, [label map PNG, JSON summary], state for re-colouring). ``min_score=None``: the checkpoint's."""
    lock = threading.Lock()  # one Segmenter, one vocabulary at a time
    results_dir = Path(results_dir) if results_dir is not None else Path(tempfile.mkdtemp(prefix="dpseg-demo-results-"))
    counter = itertools.count()
    toy = is_toy(seg.cfg)

    def segment(
        image_path: Optional[str],
        classes: str,
        refine: bool = True,
        min_score: Optional[float] = None,
        opacity: float = 0.5,
        text_only_switch: bool = False,
    ):
        if not image_path:
            raise InputError("upload an image first")
        if not isinstance(image_path, str):
            raise InputError("the image must be one uploaded file")
        names = parse_class_list(classes or "")
        if len(names) > limits.max_classes:
            raise InputError(f"{len(names)} classes given; the demo accepts up to {limits.max_classes}")
        opacity = _number("the overlay opacity", opacity, NumberRule(ge=0, le=1))
        if min_score is not None:
            min_score = _number("the threshold", min_score, NumberRule(ge=0, lt=1))
        image = read_image(
            image_path,
            int(limits.max_megapixels * 1e6),  # the upload's name, not its server path
            label=f"the uploaded file {Path(image_path).name}",
            limit_hint="start the demo with a larger --max-megapixels",
        )
        start = time.perf_counter()
        with lock:
            seg.set_vocabulary(names, text_only=text_only or bool(text_only_switch))
            refine = bool(refine) and seg.model.needs_visual_prompts and seg.prompts.has_visual
            result = seg.segment(image, refine=refine, min_score=None if min_score is None else float(min_score))
            source = seg.prompt_source
        seconds = time.perf_counter() - start
        rgb = image.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
        picture = overlay(rgb, result.labels, names, result.pixels, float(opacity), max_side=1600)
        h, w = result.size
        unlabelled = result.unlabelled_pixels / max(1, result.labels.size)
        info = (
            f"{w}x{h} px, {len(names)} classes, {'two passes' if result.refined else 'one pass'}, "
            f"{seconds:.2f} s on {seg.device}. Prompts: {source}. Unlabelled: {100 * unlabelled:.1f}% of the "
            f"pixels (best class probability below {result.min_score:g})."
        )
        warning = outside_world_warning(names) if toy else None
        if warning:
            info = f"**Warning:** {warning}.\n\n{info}"
        files = _write_downloads(results_dir, next(counter), Path(image_path).stem, result, names)
        state = {"image": rgb, "labels": result.labels, "names": names, "pixels": result.pixels}
        return picture, legend_html(names, result.pixels, result.labels.size), info, files, state

    return segment


def _number(what: str, value: Any, rule: NumberRule) -> float:
    """A number from the page or the API (which may send a string, NaN or anything else), checked by the numeric
    rule of the config keys."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    check_number(what, value, rule, InputError)
    return float(value)


def guard_options(limits: Limits, host: str) -> dict:
    """``launch()`` keyword arguments that put :class:`~dpseg.http_guard.RequestGuard` in front of every route:
    same-origin requests only, loopback host names while listening on loopback, every body capped."""
    from starlette.middleware import Middleware

    loopback = host in LOOPBACK_HOSTS
    guard = Middleware(
        RequestGuard,
        upload_limit=int(limits.max_upload_mb) << 20,
        allowed_hosts=LOOPBACK_HOSTS if loopback else None,
    )
    return {"app_kwargs": {"middleware": [guard]}}


def _write_downloads(root: Path, number: int, stem: str, result, names: list[str]) -> list[str]:
    """The label map (palette PNG, as `dpseg segment` writes it) and a JSON summary, in a folder per request; only
    the last RESULTS_KEPT folders are kept."""
    folder = root / f"{number:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60] or "image"
    label_path, json_path = folder / f"{stem}_labels.png", folder / f"{stem}.json"
    save_atomic(label_image(result.labels, len(names)), label_path)
    info = {
        "image": stem,
        "label_png": label_path.name,
        "label_format": "palette PNG" if len(names) <= 255 else "16-bit grayscale PNG",
        **result.to_dict(),
    }
    atomic_write_json(json_path, info)
    for old in sorted(p for p in root.iterdir() if p.is_dir())[:-RESULTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return [str(label_path), str(json_path)]


def recolour(state: Optional[dict], opacity: float):
    """The last result's overlay at another opacity (no new inference)."""
    if not state:
        return None
    return overlay(state["image"], state["labels"], state["names"], state["pixels"], float(opacity), max_side=1600)


def build_app(
    seg,
    limits: Limits = Limits(),
    model_note: str = "",
    text_only: bool = False,
    example: Optional[list] = None,
    min_score: Optional[float] = None,
    results_dir: Optional[Path] = None,
):
    """The gradio Blocks app around a Segmenter (not launched); ``example`` = [image path, classes];
    ``min_score`` starts the threshold slider (default: the checkpoint's eval.min_score)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    handler = make_handler(seg, limits, text_only, results_dir)
    min_score = seg.min_score if min_score is None else min_score

    def on_click(image_path, classes, refine, min_score, opacity, text_only_switch):
        try:
            return handler(image_path, classes, refine, min_score, opacity, text_only_switch)
        except DPSegError as e:
            raise gr.Error(str(e), print_exception=False) from None

    def clear():  # runs before every request: a failed one leaves no stale result on screen
        return None, "", "", None, None

    can_refine = seg.model.needs_visual_prompts
    can_switch = seg.model.needs_visual_prompts and seg.default_bank is not None and not text_only
    with gr.Blocks(title="dpseg demo", delete_cache=(3600, 3600)) as app:
        gr.Markdown("## DPSeg: segment an image into the classes you name\n" + model_note, elem_id="dpseg-note")
        with gr.Row():
            with gr.Column():
                image = gr.File(
                    label="Image (JPEG, PNG, WebP, BMP, TIFF, GIF)",
                    type="filepath",
                    file_count="single",
                    elem_id="dpseg-image",
                )  # a file, not gr.Image: dpseg's reader decodes it (module doc)
                classes = gr.Textbox(
                    label="Classes (commas between classes; or ';' between classes and commas between synonyms)",
                    value=_example_classes(seg),
                    elem_id="dpseg-classes",
                )
                with gr.Row():
                    refine = gr.Checkbox(
                        value=can_refine and seg.settings.two_pass,
                        interactive=can_refine,
                        label="two-pass prompt refinement",
                        elem_id="dpseg-refine",
                    )
                    switch = (
                        "text prompts only (no visual prompts; degraded for this model)"
                        if seg.model.needs_visual_prompts
                        else "text prompts only (this model's)"
                    )
                    text_only_box = gr.Checkbox(
                        value=text_only, interactive=can_switch, label=switch, elem_id="dpseg-text-only"
                    )
                threshold = gr.Slider(
                    0.0,
                    0.95,
                    value=min_score,
                    step=0.05,
                    elem_id="dpseg-threshold",
                    label="leave pixels below this probability unlabelled (start: the checkpoint's)",
                )
                run = gr.Button("Segment", variant="primary", elem_id="dpseg-run")
                if example:
                    gr.Examples(
                        [example], [image, classes], label="Example (click it, then Segment)", elem_id="dpseg-example"
                    )
            with gr.Column():
                result = gr.Image(label="Overlay", type="pil", format="png", interactive=False, elem_id="dpseg-overlay")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="overlay opacity", elem_id="dpseg-opacity")
                legend = gr.HTML(elem_id="dpseg-legend")
                info = gr.Markdown(elem_id="dpseg-info")
                downloads = gr.File(
                    label="Downloads: label map (palette PNG, pixel value = class index) and JSON summary",
                    file_count="multiple",
                    interactive=False,
                    elem_id="dpseg-downloads",
                )
        state = gr.State(None)
        inputs = [image, classes, refine, threshold, opacity, text_only_box]
        outputs = [result, legend, info, downloads, state]
        run.click(clear, None, outputs, api_name=_NO_API, queue=False).then(
            on_click, inputs, outputs, api_name="segment", concurrency_limit=1
        )
        classes.submit(clear, None, outputs, api_name=_NO_API, queue=False).then(
            on_click, inputs, outputs, api_name=_NO_API, concurrency_limit=1
        )
        opacity.release(recolour, [state, opacity], [result], api_name=_NO_API)
    app.queue(max_size=32)
    return app


# api_name=False keeps an event off the client API (gradio 4 to 6); gradio 6 still accepts it but annotates api_name
# as str | None, so the value is typed loosely here rather than silenced at each call
_NO_API: Any = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--checkpoint", help="checkpoint folder or hub id (default: the quickstart model)")
    parser.add_argument(
        "--bank", help="prompt bank folder (default: the checkpoint's prompts.bank / the quickstart bank)"
    )
    parser.add_argument(
        "--text-only", action="store_true", help="run without visual prompts (degraded for models trained with them)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share-on-lan", action="store_true", help="listen on all interfaces (0.0.0.0)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--max-upload-mb", type=int, default=Limits.max_upload_mb, help="largest upload accepted")
    parser.add_argument("--max-megapixels", type=float, default=Limits.max_megapixels, help="largest image accepted")
    parser.add_argument("--max-classes", type=int, default=Limits.max_classes, help="most classes per request")


def load_segmenter(checkpoint: Optional[str], bank: Optional[str], text_only: bool, device: Optional[str] = None):
    """(Segmenter, page note): the given checkpoint, or the quickstart model with its bank; the note says when the
    model is the synthetic world's toy."""
    if text_only and bank:
        raise InputError("--text-only cannot be combined with --bank")
    default = checkpoint is None
    model_dir: Union[str, Path]
    if checkpoint is None:
        model_dir, qs_bank = quickstart_artifacts()
        if not text_only:
            bank = bank or (None if qs_bank is None else str(qs_bank))
    else:
        model_dir = checkpoint
    seg = Segmenter.from_pretrained(model_dir, device=device, bank=bank)
    note = QUICKSTART_NOTE if default or is_toy(seg.cfg) else ""
    if text_only:
        seg.default_bank = None
    elif seg.default_bank is None and seg.model.needs_visual_prompts:
        raise InputError(
            f"checkpoint {model_dir} was trained with visual prompts; give --bank BANK (dpseg prompts build) "
            "or accept a degraded text-only mode with --text-only"
        )
    source = f"prompt bank `{seg.default_bank}`" if seg.default_bank else "text prompts only"
    return seg, f"{note}\n\nModel: `{model_dir}`; {source}; device {seg.device}."


def run(args: argparse.Namespace) -> int:
    for key, rule in (
        ("max_upload_mb", NumberRule(ge=1, le=1 << 20)),
        ("max_megapixels", NumberRule(gt=0, le=1e4)),
        ("max_classes", NumberRule(ge=1, le=65535)),
        ("port", NumberRule(ge=1, le=65535)),
    ):
        check_number(f"--{key.replace('_', '-')}", getattr(args, key), rule, InputError)
    host = "0.0.0.0" if args.share_on_lan and args.host == "127.0.0.1" else args.host
    seg, note = load_segmenter(args.checkpoint, args.bank, args.text_only, args.device)
    limits = Limits(args.max_upload_mb, args.max_megapixels, args.max_classes)
    toy = is_toy(seg.cfg)
    if toy:
        print(f"note: {TOY_NOTE}", file=sys.stderr)
    example = quickstart_example(Path(tempfile.mkdtemp(prefix="dpseg-demo-"))) if toy else None
    app = build_app(seg, limits, note, args.text_only, example)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach port {args.port} can use this demo", file=sys.stderr)
    try:  # quiet: gradio would advertise share=True, which this demo never uses
        app.launch(
            server_name=host,
            server_port=args.port,
            share=False,
            max_file_size=f"{args.max_upload_mb}mb",
            show_error=True,
            ssr_mode=False,
            inbrowser=False,
            quiet=True,
            prevent_thread_lock=True,
            **guard_options(limits, host),
        )
    except OSError as e:
        raise InputError(
            f"cannot listen on {host}:{args.port} ({str(e).splitlines()[0]}); pick another --port"
        ) from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    where = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else "every machine that can reach it"
    print(
        f"dpseg demo: open http://{shown}:{args.port} (listening on {host}: {where}; no public link is made). "
        "Ctrl+C stops it.",
        flush=True,
    )
    app.block_thread()
    return 0
