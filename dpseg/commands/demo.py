"""Browser demo: upload an image, type classes, see the colour overlay and its legend (gradio).

  dpseg demo                                        the synthetic-world model of 'dpseg quickstart' (a toy)
  dpseg demo --checkpoint CKPT --bank BANK          your model and prompt bank
  dpseg demo --checkpoint CKPT --text-only          no bank: degraded for models trained with visual prompts

The server listens on 127.0.0.1 only (this machine); --share-on-lan listens on every interface so that other
machines of your network can use it (no login: anyone who can reach the port can). No public share link is ever
made. Uploads above --max-upload-mb and images above --max-megapixels are refused with a message.

With the quickstart's toy model the page offers the quickstart's example scene (one of the scenes the quickstart
segmented and scored, with what it measured there) and answers class names outside the toy's world with what the
toy can do and the commands that segment photos instead (SED's released model).

The page shows the overlay (its opacity has a slider), the legend with area shares and the unlabelled share, and
offers the label map (palette PNG, as 'dpseg segment' writes it) and a JSON summary for download. Pixels below the
threshold slider stay unlabelled; it starts at the checkpoint's eval.min_score, chosen on its validation split
(dpseg calibrate). "Text prompts only" runs without visual prompts (degraded for models trained with them). A
request that fails clears the previous result, so nothing stale stays on screen. The demo's temporary files (the
downloads, gradio's copies of the example and the uploads) are removed when it stops (Ctrl+C, kill).

Every request is checked first (dpseg/http_guard.py): requests from another origin (a web page driving the demo
from the same browser) and, on loopback, addressed to another host name are refused; every request body is capped
(uploads at --max-upload-mb, everything else at 1 MB).

An upload is taken as a file, not as an image: gradio never decodes it. It goes through the reader of
dpseg segment (dpseg.image_io.read_image), which checks the size from the header before decoding, so a text file,
a truncated image or a decompression bomb gets a one-line message on the page that names the upload (never the
server's temporary path) and the demo's own limit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Union

from dpseg.config import check_number
from dpseg.config_schema import NumberRule
from dpseg.demo_app import (
    QUICKSTART_NOTE,
    Limits,
    build_app,
    guard_options,
    own_gradio_folder,
    quickstart_artifacts,
    quickstart_example,
)
from dpseg.errors import InputError
from dpseg.quickstart.toy import TOY_NOTE, is_toy


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
    parser.add_argument(
        "--max-upload-mb",
        type=int,
        default=Limits.max_upload_mb,
        help=f"largest upload accepted, in MB (default {Limits.max_upload_mb})",
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=Limits.max_megapixels,
        help=f"largest image accepted, in megapixels (default {Limits.max_megapixels:g})",
    )
    parser.add_argument(
        "--max-classes",
        type=int,
        default=Limits.max_classes,
        help=f"most classes per request (default {Limits.max_classes})",
    )


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
    from dpseg.segmenter import Segmenter

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
    own_gradio_folder()  # gradio's copies of the example and the uploads go when the demo stops
    host = "0.0.0.0" if args.share_on_lan and args.host == "127.0.0.1" else args.host
    seg, note = load_segmenter(args.checkpoint, args.bank, args.text_only, args.device)
    limits = Limits(args.max_upload_mb, args.max_megapixels, args.max_classes)
    toy = is_toy(seg.cfg)
    if toy:
        print(f"note: {TOY_NOTE}", file=sys.stderr)
    example = quickstart_example(seg.checkpoint) if toy and seg.checkpoint else None
    app = build_app(seg, limits, note, args.text_only, example)  # its downloads' folder goes when the process ends
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
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        if reason.startswith("Cannot find empty port"):  # gradio's words, and its advice for launch() callers
            reason = "the port is in use"
        raise InputError(f"cannot listen on {host}:{args.port} ({reason}); pick another --port") from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    where = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else "every machine that can reach it"
    print(
        f"dpseg demo: open http://{shown}:{args.port} (listening on {host}: {where}; no public link is made). "
        "Ctrl+C stops it.",
        flush=True,
    )
    app.block_thread()
    return 0
