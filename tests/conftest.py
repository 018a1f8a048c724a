from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared development data is not beside this checkout")
    return path


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def demo_bank_dir(tmp_path_factory):
    from cai_aug.io.demo_data import write_demo_bank

    return write_demo_bank(tmp_path_factory.mktemp("demo_bank"), per_class=4)


@pytest.fixture(scope="session")
def demo_bank(demo_bank_dir):
    from cai_aug import AnomalyBank

    return AnomalyBank.from_folder(demo_bank_dir)


@pytest.fixture(scope="session")
def demo_targets():
    from cai_aug.io.demo_data import demo_images

    return demo_images(4, 96, seed=3)


def count_cuda_syncs(fn) -> int:
    """Host synchronisations torch reports while ``fn`` runs (``torch.cuda.set_sync_debug_mode``)."""
    import warnings

    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)
