"""The code fingerprint that caches of trained runs, datasets and banks are keyed by: it follows every import of
the entry modules and nothing else, and changes with the code but not with its docstrings, comments or layout."""

import textwrap

import pytest

from dpseg.fingerprint import code_fingerprint, library_versions, source_closure


def write_package(root, files: dict) -> None:
    for name, text in files.items():
        path = root / "dpseg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def package(tmp_path):
    write_package(
        tmp_path,
        {
            "__init__.py": "",
            "engine/__init__.py": "",
            "engine/train.py": '''
                """Trains."""
                from dpseg.model import net
                from . import helper


                def run():
                    from dpseg.data.read import load  # a function-level import counts too
                    return net.forward(load())
            ''',
            "engine/helper.py": "STEP = 1\n",
            "model/__init__.py": "",
            "model/net.py": '''
                def forward(x):
                    """Doubles."""
                    return 2 * x  # why: the paper doubles
            ''',
            "data/__init__.py": "",
            "data/read.py": "def load():\n    return 1\n",
            "demo.py": "import dpseg.engine.train\n",
        },
    )
    return tmp_path / "dpseg"


def test_the_closure_holds_every_imported_module_and_its_packages_and_nothing_else(package):
    closure = source_closure("dpseg.engine.train", package=package)
    assert set(closure) == {
        "dpseg.engine",
        "dpseg.engine.train",
        "dpseg.engine.helper",
        "dpseg.model",
        "dpseg.model.net",
        "dpseg.data",
        "dpseg.data.read",
    }  # not dpseg.demo, which imports the entry; not the package root, which makes nothing


def test_docstrings_comments_and_layout_do_not_count_but_code_does(package):
    before = source_closure("dpseg.engine.train", package=package)
    net = package / "model" / "net.py"
    net.write_text('def forward(x):\n    """Doubles its input."""\n\n    return 2 * x  # a new comment\n')
    assert source_closure("dpseg.engine.train", package=package) == before
    net.write_text("def forward(x):\n    return 3 * x\n")
    after = source_closure("dpseg.engine.train", package=package)
    assert after["dpseg.model.net"] != before["dpseg.model.net"]
    assert {k: v for k, v in after.items() if k != "dpseg.model.net"} == {
        k: v for k, v in before.items() if k != "dpseg.model.net"
    }
    (package / "data" / "read.py").write_text("def load():\n    return 2\n")  # reached only inside a function
    assert source_closure("dpseg.engine.train", package=package)["dpseg.data.read"] != before["dpseg.data.read"]


def test_an_entry_that_is_no_dpseg_module_is_refused(package):
    with pytest.raises(ValueError, match="dpseg.engine.missing is not a dpseg module"):
        source_closure("dpseg.engine.missing", package=package)
    with pytest.raises(ValueError, match="torch is not a dpseg module"):
        source_closure("torch", package=package)


def test_the_fingerprint_names_the_real_training_code_and_the_libraries():
    closure = source_closure("dpseg.engine.train")
    assert {"dpseg.engine.train", "dpseg.model.dpseg", "dpseg.model.loss", "dpseg.data.transforms"} <= set(closure)
    assert "dpseg.quickstart.run" not in closure and "dpseg.demo_app" not in closure
    assert set(library_versions()) == {"torch", "timm", "open_clip_torch", "numpy"}
    fingerprint = code_fingerprint("dpseg.engine.train")
    assert len(fingerprint) == 16 and fingerprint == code_fingerprint("dpseg.engine.train")
    assert fingerprint != code_fingerprint("dpseg.data.synthetic.folders")
