"""The browser demo's app (gradio): the page, its request handler, downloads and limits; ``dpseg demo`` serves it.

What the page does and how each request is guarded is in :mod:`dpseg.commands.demo`'s doc. This module imports no
model, image reader or gradio at import time (they are imported where they are used), so ``dpseg demo --help``
stays instant.
"""

from __future__ import annotations

import atexit
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
from dpseg.config import check_number
from dpseg.config_schema import NumberRule
from dpseg.errors import BankError, DPSegError, InputError
from dpseg.http_guard import LOOPBACK_HOSTS, RequestGuard
from dpseg.quickstart import default_artifacts, demo_example
from dpseg.quickstart.toy import PHOTO_CHECKPOINT, is_toy, toy_refusal
from dpseg.vocab import parse_class_list

QUICKSTART_NOTE = (
    "**This is the toy model of `dpseg quickstart`**, trained on the built-in synthetic world: it "
    "knows rendered shapes named *colour pattern shape* (e.g. `red striped star`), not real photos; "
    "other class names are answered with what it can do instead. The background is not a class in that world, so "
    "pixels below the threshold (chosen on the world's validation scenes) stay unlabelled. For photos, start the "
    f"demo with a real model: `dpseg demo --checkpoint {PHOTO_CHECKPOINT}` (SED's released model, converted)."
)


RESULTS_KEPT = 16  # downloadable results kept on disk (older ones are deleted)


# api_name=False keeps an event off the client API (gradio 4 to 6); gradio 6 still accepts it but annotates api_name
# as str | None, so the value is typed loosely here rather than silenced at each call
_NO_API: Any = False


@dataclass
class Limits:
    max_upload_mb: int = 20
    max_megapixels: float = 16.0
    max_classes: int = 100


def quickstart_artifacts() -> tuple[Path, Optional[Path]]:
    """(checkpoint dir, bank dir or None) of the last quickstart (``$DPSEG_CACHE/quickstart``, else
    ``.dpseg_cache/quickstart``); CheckpointError if there is none yet."""
    return default_artifacts()


class OutsideWorld(InputError):
    """Class names the toy model cannot know: shown on the page, with the route for photos, not as a passing toast."""


def quickstart_example(model_dir) -> Optional[dict]:
    """The example the page offers with a quickstart model: one of the scenes the quickstart segmented and scored
    with it (``{"image", "classes", "objects": verdicts}``, :func:`dpseg.quickstart.demo_example`), or None."""
    return demo_example(model_dir)


def example_caption(example: dict) -> str:
    """What the quickstart measured on the example scene, for the page (markdown)."""
    objects = example.get("objects") or []
    verdicts = "; ".join(
        f"`{o['class']}` {o['verdict']}" + (f" (as `{o['predicted']}`)" if o["verdict"] == "wrong" else "")
        for o in objects
    )
    return (
        f"**Example**: `{Path(example['image']).name}`, a test scene of classes the model never saw in training, "
        f"with all {len(example['classes'].split('; '))} of them as the vocabulary. Press *Use the example*, then "
        "*Segment*."
        + (
            f" When the quickstart segmented it with the same settings, object by object: {verdicts}."
            if objects
            else ""
        )
    )


def _temporary_folder() -> Path:
    """A folder for the demo's downloads, removed when the process ends (also after a failed start)."""
    folder = Path(tempfile.mkdtemp(prefix="dpseg-demo-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def own_gradio_folder() -> None:
    """Point gradio's cache of served and uploaded files (``$GRADIO_TEMP_DIR``, else ``$TMPDIR/gradio``) into a
    folder of the demo's, removed when the process ends, unless the user set ``GRADIO_TEMP_DIR``: gradio would leave
    ``$TMPDIR/gradio`` behind (copies of the example and the uploads, empty folders, its edit history), also after
    a failed start. Only before gradio is imported: some of its modules read the variable at import, and a folder
    changed after that would split its cache in two (uploads refused as "not uploaded by a user")."""
    if not os.environ.get("GRADIO_TEMP_DIR") and "gradio" not in sys.modules:
        os.environ["GRADIO_TEMP_DIR"] = str(_temporary_folder() / "gradio")


def make_handler(seg, limits: Limits, text_only: bool = False, results_dir: Optional[Path] = None):
    """The demo's function: (image file, classes text, refine, min score, opacity, text only) -> (overlay, legend
    HTML, info, [label map PNG, JSON summary], state for re-colouring). ``min_score=None``: the checkpoint's."""
    from dpseg.image_io import read_image
    from dpseg.visualize import legend_html, overlay

    lock = threading.Lock()  # one Segmenter, one vocabulary at a time
    results_dir = Path(results_dir) if results_dir is not None else _temporary_folder()
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
        refusal = toy_refusal(names, retry=["dpseg", "demo"]) if toy else None
        if refusal:  # before any work: nothing the toy would paint for these names means anything
            raise OutsideWorld(refusal)
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
            + (
                "pixels (threshold 0: every pixel gets its most probable class)."
                if result.min_score == 0
                else f"pixels (best class probability below {result.min_score:g})."
            )
        )
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
    from dpseg.image_io import label_image, save_atomic
    from dpseg.visualize import class_palette

    folder = root / f"{number:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60] or "image"
    label_path, json_path = folder / f"{stem}_labels.png", folder / f"{stem}.json"
    save_atomic(label_image(result.labels, len(names), class_palette(names)), label_path)
    info = {
        "image": stem,
        "label_png": label_path.name,
        "label_format": "palette PNG" if len(names) <= 255 else "16-bit grayscale PNG",
        **result.to_dict(),
    }
    atomic_write_json(json_path, info)
    for old in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())[:-RESULTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return [str(label_path), str(json_path)]


def recolour(state: Optional[dict], opacity: float):
    """The last result's overlay at another opacity (no new inference)."""
    if not state:
        return None
    from dpseg.visualize import overlay

    return overlay(state["image"], state["labels"], state["names"], state["pixels"], float(opacity), max_side=1600)


def build_app(
    seg,
    limits: Limits = Limits(),
    model_note: str = "",
    text_only: bool = False,
    example: Union[dict, list, None] = None,
    min_score: Optional[float] = None,
    results_dir: Optional[Path] = None,
):
    """The gradio Blocks app around a Segmenter (not launched); ``example``: {"image", "classes", "objects"} (as
    :func:`quickstart_example` gives) or [image path, classes]; ``min_score`` starts the threshold slider (default:
    the checkpoint's eval.min_score)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    results_dir = Path(results_dir) if results_dir is not None else _temporary_folder()
    handler = make_handler(seg, limits, text_only, results_dir)
    min_score = seg.min_score if min_score is None else min_score

    can_refine = seg.model.needs_visual_prompts
    can_switch = seg.model.needs_visual_prompts and seg.default_bank is not None and not text_only

    def on_click(image_path, classes, refine, min_score, opacity, text_only_switch):
        try:
            return handler(image_path, classes, refine, min_score, opacity, text_only_switch)
        except OutsideWorld as e:  # on the page, where it stays, with its commands as code
            return None, "", f"**The toy model cannot segment these classes.** {e}", None, None
        except BankError as e:  # the bank lacks classes: the switch on this page is the other way, degraded
            hint = " Or tick *text prompts only* above (degraded: see its label)." if can_switch else ""
            raise gr.Error(f"{e}{hint}", print_exception=False) from None
        except DPSegError as e:
            raise gr.Error(str(e), print_exception=False) from None

    def clear():  # runs before every request: a failed one leaves no stale result on screen
        return None, "", "", None, None

    if isinstance(example, (list, tuple)):
        example = {"image": example[0], "classes": example[1]}
    if example:  # a copy in the demo's own folder: gradio serves files from there wherever the demo was started
        copy = results_dir / "example" / Path(example["image"]).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(example["image"], copy)
        example = {**example, "image": str(copy)}
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
                    label="Classes",
                    info="commas between classes; or ';' between classes and commas between synonyms",
                    placeholder="red striped star; blue solid square" if is_toy(seg.cfg) else "cat; sofa, couch; lamp",
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
                if example:  # its picture, what the quickstart measured on it, and a button that fills the inputs
                    with gr.Group(elem_id="dpseg-example"):
                        gr.Image(
                            example["image"],
                            label="Example scene",
                            type="filepath",
                            interactive=False,
                            height=192,
                            elem_id="dpseg-example-image",
                        )
                        gr.Markdown(example_caption(example), elem_id="dpseg-example-caption")
                        use = gr.Button("Use the example", size="sm", elem_id="dpseg-example-use")
                    use.click(lambda: (example["image"], example["classes"]), None, [image, classes], api_name=_NO_API)
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
