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


@pytest.fixture
def tiny_cfg():
    from dpseg.config import build_config

    return build_config("dpseg-tiny")
