import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Test tensors are tiny: one intra-op thread is fastest, and it keeps OpenMP threads from spinning against each
# other when the suite (or its subprocesses: CLI runs, DDP ranks) share two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs with one intra-op thread, whatever an earlier test set: on a shared 2-core machine two OpenMP
    threads per process spin against each other and make a tiny step 10-50x slower; one thread also keeps every
    run on the same kernels (bit-identical reruns)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_INIT_MODULES = ("torch.nn.init", "torch.nn.modules.activation", "torch.nn.modules.linear", "torch.nn.modules.conv")


def _init_functions() -> dict:
    import sys

    return {
        (m, n): getattr(sys.modules[m], n)
        for m in _INIT_MODULES
        if m in sys.modules
        for n in dir(sys.modules[m])
        if n.endswith("_") and not n.startswith("__") and callable(getattr(sys.modules[m], n))
    }


@pytest.fixture(autouse=True)
def _init_functions_restored():
    """No test may leave torch.nn.init patched (a model loader's skip-init no-op left in place by two overlapping
    loads makes every later model keep uninitialised memory: NaN on some machines, silently finite on others)."""
    import sys

    before = _init_functions()
    yield
    changed = sorted(key for key, f in _init_functions().items() if before.get(key, f) is not f)
    for module, name in changed:  # put back, so that one leak fails one test, not every later one
        setattr(sys.modules[module], name, before[(module, name)])
    assert not changed, f"this test left torch's initialisers patched: {', '.join(f'{m}.{n}' for m, n in changed)}"


@pytest.fixture
def tiny_cfg():
    from dpseg.config import build_config

    return build_config("dpseg-tiny")


@pytest.fixture(scope="session")
def quickstart_fast(tmp_path_factory):
    """``dpseg quickstart --fast`` once per test session: (root, exit status); its outputs are in ``root/out`` and its
    cache in ``root/cache`` (tests/test_synthetic_quickstart.py, tests/test_readme.py, tests/test_first_hour.py)."""
    from dpseg.commands import main

    root = tmp_path_factory.mktemp("quickstart")
    rc = main(["quickstart", "--fast", "--out", str(root / "out"), "--cache", str(root / "cache")])
    return root, rc
