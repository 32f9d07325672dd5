"""benchmarks/method_study.py: a study never moves the demo pointer of the cache it runs in."""

from __future__ import annotations

import pytest
from helpers import load_benchmark

method_study = load_benchmark("method_study")


def test_a_study_leaves_the_demo_pointer_as_it_was(tmp_path):
    pointer = tmp_path / "latest.json"
    pointer.write_text('{"model": "the-quickstart-model"}')
    with method_study.demo_pointer_kept(tmp_path):
        pointer.write_text('{"model": "a-study-model"}')  # what quickstart() does at its end
    assert pointer.read_text() == '{"model": "the-quickstart-model"}'


def test_a_study_in_a_fresh_cache_leaves_no_demo_pointer(tmp_path):
    with method_study.demo_pointer_kept(tmp_path):
        (tmp_path / "latest.json").write_text('{"model": "a-study-model"}')
    assert not (tmp_path / "latest.json").exists()


def test_an_interrupted_study_still_restores_the_demo_pointer(tmp_path):
    pointer = tmp_path / "latest.json"
    pointer.write_text("before")
    with pytest.raises(KeyboardInterrupt), method_study.demo_pointer_kept(tmp_path):
        pointer.write_text("during")
        raise KeyboardInterrupt
    assert pointer.read_text() == "before"
