"""``dpseg demo``: loopback binding, the quickstart default, limits, driven over HTTP with gradio_client and
end to end in headless Chromium (skipped only when Chromium or its driver is not installed)."""

import json
import os
import shutil
import socket
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*(downcasting|copy keyword).*")

from segment_helpers import artifacts, scene  # noqa: E402

from dpseg import demo_app as demo  # noqa: E402
from dpseg.commands import main  # noqa: E402
from dpseg.commands.demo import load_segmenter  # noqa: E402
from dpseg.errors import CheckpointError, DPSegError, InputError  # noqa: E402

CHROMIUM, CHROMEDRIVER = (
    shutil.which("chromium") or "/usr/bin/chromium",
    shutil.which("chromedriver") or "/usr/bin/chromedriver",
)
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo app on a free loopback port (tiny checkpoint + bank), with tight limits to test them."""
    a = artifacts()
    seg, note = load_segmenter(str(a.ckpt), str(a.bank), text_only=False, device="cpu")
    app = demo.build_app(seg, demo.Limits(max_upload_mb=1, max_megapixels=0.02, max_classes=5), note)
    port = free_port()
    app.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        share=False,
        show_error=True,
        max_file_size="1mb",
        ssr_mode=False,
        quiet=True,
    )
    yield types.SimpleNamespace(
        url=f"http://127.0.0.1:{port}/", app=app, note=note, files=tmp_path_factory.mktemp("demo")
    )
    app.close()


def test_gradio_client_segments_and_reports_errors(server):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    Image.fromarray(scene()).save(server.files / "x.png")
    client = Client(server.url, verbose=False)
    overlay, legend, info, files = client.predict(
        handle_file(str(server.files / "x.png")), "cat; sofa, couch", True, 0.0, 0.5, False, api_name="/segment"
    )
    picture = Image.open(overlay)
    assert picture.height >= 72 and picture.width > 96  # overlay + legend panel
    assert "sofa, couch" in legend or "cat" in legend
    assert "96x72 px, 2 classes, two passes" in info and "bank" in info and "Unlabelled: 0.0%" in info
    summary, label_png = sorted(files, key=lambda p: Path(p).suffix)  # .json, .png
    assert Path(label_png).name == "x_labels.png" and Image.open(label_png).mode == "P"  # as `dpseg segment` writes it
    info_json = json.loads(Path(summary).read_text())
    assert [c["name"] for c in info_json["classes"]] == ["cat", "sofa, couch"] and info_json["size"] == [72, 96]
    assert np.bincount(np.asarray(Image.open(label_png)).ravel(), minlength=2)[:2].tolist() == [
        c["pixels"] for c in info_json["classes"]
    ]
    for classes, message in [
        ("", "class list is empty"),
        ("a; b; c; d; e; f", "up to 5"),
        ("cat, cat", "more than once"),
        ("cat, giraffe", r"lacks 1 of the 2 classes.*Or tick \*text prompts only\* above"),  # the page's other way
    ]:
        with pytest.raises(AppError, match=message):
            client.predict(
                handle_file(str(server.files / "x.png")), classes, False, 0.0, 0.5, False, api_name="/segment"
            )
    Image.fromarray(scene(200, 200)).save(server.files / "big.png")  # 0.04 MP > 0.02 MP
    with pytest.raises(AppError, match="above the limit"):
        client.predict(handle_file(str(server.files / "big.png")), "cat", False, 0.0, 0.5, False, api_name="/segment")
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    Image.fromarray(noise).save(server.files / "heavy.png")  # ~1.5 MB > 1 MB upload limit
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(server.files / "heavy.png")), "cat", False, 0.0, 0.5, False, api_name="/segment")


def test_chromium_loads_the_page_submits_an_image_and_shows_the_result(server):
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    Image.fromarray(scene(seed=3)).save(server.files / "page.png")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=server.files)}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dpseg-run"))
        assert (
            driver.title == "dpseg demo"
            and "segment an image" in driver.find_element(By.CSS_SELECTOR, "#dpseg-note").text
        )
        driver.find_element(By.CSS_SELECTOR, "#dpseg-image input[type=file]").send_keys(str(server.files / "page.png"))
        box = driver.find_element(By.CSS_SELECTOR, "#dpseg-classes textarea, #dpseg-classes input")
        box.clear()
        box.send_keys("cat; sofa, couch")
        wait.until(
            lambda d: "page" in d.find_element(By.CSS_SELECTOR, "#dpseg-image").text
        )  # upload listed (name, size)
        driver.find_element(By.CSS_SELECTOR, "#dpseg-run").click()
        wait.until(lambda d: "96x72 px" in d.find_element(By.CSS_SELECTOR, "#dpseg-info").text)
        legend = driver.find_element(By.CSS_SELECTOR, "#dpseg-legend").text
        assert "%" in legend and ("cat" in legend or "sofa, couch" in legend)
        shown = driver.find_elements(By.CSS_SELECTOR, "#dpseg-overlay img")
        assert shown and shown[0].get_property("naturalWidth") > 96  # a decoded image, legend panel included
    finally:
        driver.quit()


def test_loopback_by_default_lan_only_when_asked(monkeypatch, capsys):
    launched = []

    class FakeApp:
        def launch(self, **kwargs):
            launched.append(kwargs)

        def block_thread(self):
            pass

    import dpseg.commands.demo as command

    monkeypatch.setattr(
        command, "load_segmenter", lambda *a: (types.SimpleNamespace(cfg=types.SimpleNamespace()), "note")
    )
    monkeypatch.setattr(command, "build_app", lambda *a: FakeApp())
    assert main(["demo", "--checkpoint", "x"]) == 0
    assert main(["demo", "--checkpoint", "x", "--share-on-lan", "--port", "9000", "--max-upload-mb", "3"]) == 0
    assert [k["server_name"] for k in launched] == ["127.0.0.1", "0.0.0.0"]
    assert launched[1]["server_port"] == 9000 and launched[1]["max_file_size"] == "3mb"
    assert not any(k["share"] for k in launched)
    assert all(k["quiet"] for k in launched)  # gradio's own banner would suggest share=True; ours says there is none
    out, err = capsys.readouterr()
    assert "anyone who can reach port 9000" in err and "open http://127.0.0.1:7860" in out
    assert out.count("no public link is made") == 2 and "share" not in out
    assert main(["demo", "--checkpoint", "x", "--max-megapixels", "0"]) == 2


def test_no_checkpoint_uses_the_quickstart_model_and_says_so(monkeypatch, tmp_path):
    a = artifacts()
    monkeypatch.setattr(demo, "default_artifacts", lambda: (a.ckpt, a.bank))  # the contract of dpseg.quickstart
    seg, note = load_segmenter(None, None, text_only=False, device="cpu")
    assert "dpseg quickstart" in note and str(seg.default_bank) == str(a.bank)
    assert demo.quickstart_example(tmp_path) is None  # no quickstart has named its example scene there
    monkeypatch.undo()  # the real dpseg.quickstart: the last run's latest.json under $DPSEG_CACHE/quickstart
    monkeypatch.setenv("DPSEG_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="run `dpseg quickstart` first"):
        load_segmenter(None, None, text_only=False)
    cache = tmp_path / "quickstart"
    cache.mkdir()
    (cache / "latest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable.*rerun `dpseg quickstart`"):
        load_segmenter(None, None, text_only=False)
    (cache / "latest.json").write_text(json.dumps({"model": str(tmp_path / "gone"), "bank": None}))
    with pytest.raises(CheckpointError, match="is gone"):
        load_segmenter(None, None, text_only=False)
    (cache / "latest.json").write_text(json.dumps({"model": str(a.ckpt), "bank": str(a.bank)}))
    seg, note = load_segmenter(None, None, text_only=False, device="cpu")
    assert "dpseg quickstart" in note and Path(seg.default_bank) == Path(a.bank)
    with pytest.raises(InputError, match="--text-only"):
        load_segmenter(str(a.ckpt), None, text_only=False, device="cpu")
    seg, note = load_segmenter(str(a.ckpt), None, text_only=True, device="cpu")
    assert "text prompts only" in note


def bad_uploads(folder) -> dict:
    """Uploads that must be refused with a message naming the upload (issue 17 #5): name -> expected message."""
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake.png").write_text("a text file named like an image")
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x40")
    Image.new("1", (15000, 15000)).save(folder / "bomb.png")  # 225 MP in 27 kB: a decompression bomb
    Image.fromarray(scene(200, 200)).save(folder / "big.png")  # 0.04 MP > the test limit of 0.02 MP
    return {
        "notes.txt": "cannot read the uploaded file notes.txt: not an image file this reader knows",
        "fake.png": "cannot read the uploaded file fake.png: not an image file this reader knows",
        "cut.png": "cannot read the uploaded file cut.png",
        "bomb.png": "the uploaded file bomb.png exceeds Pillow's safety limit of 179 megapixels",
        "big.png": "the uploaded file big.png is 200x200 = 0.0 megapixels, above the limit of 0.0; downscale it first "
        "or start the demo with a larger --max-megapixels",
    }


def test_uploads_go_through_dpsegs_reader_and_limits(tmp_path):
    a = artifacts()
    seg, _ = load_segmenter(str(a.ckpt), str(a.bank), text_only=False, device="cpu")
    handler = demo.make_handler(seg, demo.Limits(max_megapixels=0.02))
    for name, message in bad_uploads(tmp_path).items():
        with pytest.raises(DPSegError) as err:
            handler(str(tmp_path / name), "cat")
        text = str(err.value)
        assert message in text and "\n" not in text, name
        assert str(tmp_path) not in text and "--max-pixels" not in text, text  # no server path, no segment-only flag


def test_bad_uploads_get_a_message_on_the_page_and_no_server_traceback(server, capfd):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False)
    folder = server.files / "bad"
    folder.mkdir()
    for name, message in bad_uploads(folder).items():
        with pytest.raises(AppError) as err:
            client.predict(handle_file(str(folder / name)), "cat", False, 0.0, 0.5, False, api_name="/segment")
        assert message in str(err.value) and "/tmp/" not in str(err.value), (name, str(err.value))
    output = capfd.readouterr()
    assert "Traceback" not in output.err + output.out


def test_opacity_text_only_switch_threshold_default_and_toy_warnings(tmp_path):
    a = artifacts()
    seg, _ = load_segmenter(str(a.ckpt), str(a.bank), text_only=False, device="cpu")
    handler = demo.make_handler(seg, demo.Limits(), results_dir=tmp_path / "results")
    Image.fromarray(scene(seed=2)).save(tmp_path / "x.png")
    faint, _, info, files, state = handler(str(tmp_path / "x.png"), "cat; lamp", False, None, 0.0)
    strong = handler(str(tmp_path / "x.png"), "cat; lamp", False, None, 1.0)[0]
    from dpseg.visualize import blend, palette

    for picture, alpha in ((faint, 0.0), (strong, 1.0)):  # opacity 0: the image with class borders; 1: the colours
        assert np.array_equal(np.asarray(picture)[:72, :96], blend(scene(seed=2), state["labels"], palette(2), alpha))
    assert not np.array_equal(np.asarray(strong), np.asarray(faint))
    assert np.array_equal(np.asarray(demo.recolour(state, 1.0)), np.asarray(strong))  # no new inference needed
    assert demo.recolour(None, 0.3) is None
    assert "(threshold 0: every pixel gets its most probable class)" in info  # the checkpoint's threshold: 0 here
    assert all(Path(f).is_file() for f in files)
    seg.min_score = 0.5  # as a calibrated checkpoint: its threshold is the default
    assert "(best class probability below 0.5)" in handler(str(tmp_path / "x.png"), "cat; lamp", False)[2]
    assert "Prompts: bank" in info
    assert "DEGRADED" in handler(str(tmp_path / "x.png"), "cat; lamp", False, 0, 0.5, True)[2]  # the text-only switch
    with pytest.raises(InputError, match=r"opacity must be a finite number in \[0, 1\]"):
        handler(str(tmp_path / "x.png"), "cat", False, 0, 1.5)
    for _ in range(demo.RESULTS_KEPT + 2):
        handler(str(tmp_path / "x.png"), "cat", False, 0)
    assert len(list((tmp_path / "results").iterdir())) == demo.RESULTS_KEPT  # old downloads are deleted
    seg.cfg.preset = "synthetic"  # the toy world's model: classes outside its world are refused, with the route
    toy = demo.make_handler(seg, demo.Limits(), results_dir=tmp_path / "results")
    with pytest.raises(demo.OutsideWorld, match="'cat' is not in the toy model's world.*dpseg convert sed"):
        toy(str(tmp_path / "x.png"), "cat; red striped star", False, 0, 0.5, True)


def rendered_example(folder: Path) -> tuple[str, str]:
    """A rendered synthetic scene of three objects (unseen classes first) and the classes in it."""
    from dpseg.data.synthetic.render import random_scene
    from dpseg.data.synthetic.world import all_classes, unseen_classes

    scene = random_scene(unseen_classes() + all_classes()[:5], np.random.default_rng(7), size=192, num_objects=(3, 3))
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.image).save(folder / "synthetic_scene.png")
    return str(folder / "synthetic_scene.png"), "; ".join(pl.cls.name for pl in scene.placements)


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    """The demo as `dpseg demo` shows the quickstart's toy: a tiny model dressed as the synthetic world's (preset
    synthetic), a bank holding the one-click example's classes, and a threshold known to split the example: the
    grid value that leaves closest to half of its pixels unlabelled, written as the checkpoint's calibration."""
    from dpseg.checkpoint import load_model
    from dpseg.evaluation.calibrate import THRESHOLDS, Calibration, write_calibration
    from dpseg.prompts.bank import PromptBank
    from dpseg.prompts.builder import add_exemplars
    from dpseg.segmenter import Segmenter

    a, root = artifacts(), tmp_path_factory.mktemp("toy")
    ckpt, bank = shutil.copytree(a.ckpt, root / "ckpt"), shutil.copytree(a.bank, root / "bank")
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "preset": "synthetic"}))
    image, classes = rendered_example(root / "example")
    model, _ = load_model(ckpt)
    rng = np.random.default_rng(0)
    add_exemplars(
        PromptBank.open(bank),
        {n: [Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))] for n in classes.split("; ")},
        model.prompt_encoder,
        model.text_encoder,
    )
    seg = Segmenter.from_pretrained(ckpt, device="cpu", bank=str(bank)).set_vocabulary(classes)
    scores = seg.segment(image, min_score=0).scores
    threshold = min(THRESHOLDS, key=lambda t: abs((scores < t).mean() - 0.5))
    write_calibration(ckpt, Calibration(threshold, False, "the example scene"))
    seg, note = load_segmenter(str(ckpt), str(bank), text_only=False, device="cpu")
    app = demo.build_app(seg, demo.Limits(), note, example=[image, classes], results_dir=root / "results")
    port = free_port()
    app.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        share=False,
        show_error=True,
        ssr_mode=False,
        quiet=True,
    )
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}/", threshold=threshold, files=root)
    app.close()


def test_chromium_the_toy_example_is_partly_labelled_and_an_error_clears_the_result(toy_server):
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install -y chromium chromium-driver")
    import re

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=toy_server.files)}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.get(toy_server.url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dpseg-example-use"))
        note = " ".join(driver.find_element(By.CSS_SELECTOR, "#dpseg-note").text.split())
        assert "This is the toy model of dpseg quickstart" in note  # said once, on the page
        shown = driver.find_element(By.CSS_SELECTOR, "#dpseg-threshold input[type=number]").get_attribute("value")
        assert float(shown) == pytest.approx(toy_server.threshold)  # the slider starts at the checkpoint's threshold
        driver.find_element(By.CSS_SELECTOR, "#dpseg-example-use").click()  # the example fills the inputs
        wait.until(lambda d: "synthetic_scene" in d.find_element(By.CSS_SELECTOR, "#dpseg-image").text)
        driver.find_element(By.CSS_SELECTOR, "#dpseg-run").click()
        wait.until(lambda d: "Unlabelled:" in d.find_element(By.CSS_SELECTOR, "#dpseg-info").text)
        info = driver.find_element(By.CSS_SELECTOR, "#dpseg-info").text
        unlabelled = float(re.search(r"Unlabelled: ([\d.]+)%", info).group(1))
        assert 0 < unlabelled < 100, info  # neither everything painted nor nothing found
        assert "%" in driver.find_element(By.CSS_SELECTOR, "#dpseg-legend").text
        downloads = "".join(driver.find_element(By.CSS_SELECTOR, "#dpseg-downloads").text.split())
        assert "synthetic_scene_labels.png" in downloads and "synthetic_scene.json" in downloads
        assert driver.find_elements(By.CSS_SELECTOR, "#dpseg-overlay img")
        box = driver.find_element(By.CSS_SELECTOR, "#dpseg-classes textarea, #dpseg-classes input")
        box.clear()
        box.send_keys("cat, cat")  # an error: the old result must not stay on screen
        driver.find_element(By.CSS_SELECTOR, "#dpseg-run").click()
        wait.until(lambda d: "more than once" in d.find_element(By.TAG_NAME, "body").text)
        wait.until(lambda d: "Unlabelled" not in d.find_element(By.CSS_SELECTOR, "#dpseg-info").text)
        assert not driver.find_elements(By.CSS_SELECTOR, "#dpseg-legend .dpseg-legend-item")  # gradio shows "Error"
        assert not driver.find_elements(By.CSS_SELECTOR, "#dpseg-overlay img")
        assert "synthetic_scene" not in "".join(driver.find_element(By.CSS_SELECTOR, "#dpseg-downloads").text.split())
    finally:
        driver.quit()
