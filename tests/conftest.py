from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _torchvision_schemas() -> object | None:
    """Let a CUDA torchvision wheel import on a CPU torch (test set-up only, never in the library).

    PyPI's torchvision is a CUDA build: with the CPU torch its compiled ops do not load, and
    ``import torchvision`` dies registering fake kernels for ``torchvision::nms`` and ``qnms`` (the two
    registered unconditionally). Defining those two schemas first lets it import; only the detection ops
    stay unavailable, which nothing here uses. A torchvision whose ops load defines them itself: then
    this is skipped. The returned library must stay alive for the schemas to stay defined.
    """
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        torch.ops.torchvision.nms  # noqa: B018 - present when torchvision's own ops are already loaded
        return None
    except (AttributeError, RuntimeError):
        pass
    import glob

    spec = importlib.util.find_spec("torchvision")
    libraries = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
    try:
        for library in libraries:
            torch.ops.load_library(library)  # a matching (CPU or CUDA-with-GPU) build loads its own ops
        torch.ops.torchvision.nms  # noqa: B018
        return None
    except (OSError, RuntimeError, AttributeError):
        pass
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return library


_TORCHVISION_SCHEMAS = _torchvision_schemas()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared development data is not beside this checkout")
    return path


# `gpu` marks a test that needs CUDA: it is skipped without a device (below), and `pytest -m gpu` selects
# every such test on a GPU machine (benchmarks/gpu_check.sh)
requires_cuda = pytest.mark.gpu


def solver_is_compiled() -> bool:
    """Whether CPU solves go to the compiled solver: its results are bit for bit independent of batch
    companions and batch order. The torch loop (no C++ compiler, ``CAI_AUG_POISSON_CPU_KERNEL=0``) solves
    a bucket on a shared canvas, where sums of other lengths round differently: float noise only."""
    from cai_aug.poisson import cpu_kernel

    return cpu_kernel.enabled(torch.float32, torch.device("cpu"))


def assert_same_pixels(a: torch.Tensor, b: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor) -> None:
    """Images and masks equal bit for bit with the compiled solver; with the torch loop, equal to float
    noise (within 1e-4) and masks that differ on at most 0.1 % of their pixels (a pixel at the
    threshold may flip)."""
    if solver_is_compiled():
        assert torch.equal(a, b) and torch.equal(mask_a, mask_b)
    else:
        assert (a.float() - b.float()).abs().max() <= 1e-4
        assert (mask_a != mask_b).float().mean() <= 1e-3


def without_solver_diagnostics(record: dict) -> dict:
    """An anomaly's record without the solver's float diagnostics (``poisson_residual``), also in the
    records of an image's further anomalies (``more``): the decisions alone."""
    out = {k: v for k, v in record.items() if k != "poisson_residual"}
    if "more" in out:
        out["more"] = [without_solver_diagnostics(m) for m in out["more"]]
    return out


def assert_same_record(a: dict, b: dict) -> None:
    """The same decisions exactly, also in ``more``; the solver's residual (a float diagnostic) bit for
    bit with the compiled solver, to float noise with the torch loop."""
    assert without_solver_diagnostics(a) == without_solver_diagnostics(b)
    for x, y in zip([a, *a.get("more", [])], [b, *b.get("more", [])], strict=True):
        if solver_is_compiled():
            assert x.get("poisson_residual") == y.get("poisson_residual")
        elif "poisson_residual" in x:
            assert x["poisson_residual"] == pytest.approx(y["poisson_residual"], rel=1e-2, abs=1e-7)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


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


README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def readme_blocks(section: str, language: str = "python") -> list[str]:
    """The ``language`` code blocks of section ``section`` (``<!-- section:NAME -->`` ...
    ``<!-- /section:NAME -->``) of the README or a page of ``docs/``; a missing section or block fails the
    test (the documentation must show it)."""
    import re

    start, end = f"<!-- section:{section} -->", f"<!-- /section:{section} -->"
    texts = [path.read_text(encoding="utf-8") for path in [README, *sorted(DOCS.rglob("*.md"))]]
    text = next((text for text in texts if start in text and end in text), None)
    assert text is not None, f"neither README.md nor docs/ has a '{section}' section"
    blocks = re.findall(rf"```{language}\n(.*?)```", text.split(start, 1)[1].split(end, 1)[0], flags=re.S)
    assert blocks, f"section '{section}' has no {language} code block"
    return blocks


def run_readme(section: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run the Python blocks of README section ``section`` in ``workdir``, in order, in one namespace."""
    monkeypatch.chdir(workdir)
    namespace: dict = {}
    exec(compile("\n".join(readme_blocks(section)), "README.md", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.fixture()
def cached_demo_bank(demo_bank_dir, monkeypatch):
    """``write_demo_bank`` copies the session's demo bank instead of drawing a new one (seconds per call).

    README examples call ``write_demo_bank(...)`` as a user would; their tests run that code as written
    with this fixture, so only the demo data is shared between them.
    """
    import shutil

    from cai_aug.io import demo_data

    def copy(path, per_class: int = 6, seed: int = 0) -> Path:
        target = Path(path)
        if not target.exists():
            shutil.copytree(demo_bank_dir, target)
        return target

    monkeypatch.setattr(demo_data, "write_demo_bank", copy)
    return demo_bank_dir


@pytest.fixture(autouse=True)
def _one_thread_for_solver_tests(request: pytest.FixtureRequest):
    """Solver tests run on one torch thread: on a shared 2-core machine, 2 threads can be 10x slower."""
    if "poisson" not in request.node.path.parts:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
