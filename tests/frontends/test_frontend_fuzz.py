"""Bounded fuzzing of the host front ends over odd inputs: a valid result or a clear error, nothing else.

Shapes (tiny to wide, 1 to 4 channels), dtypes (uint8, float16/32/64, int32, bool), value ranges
(unit, a bicubic overshoot, ImageNet-normalised, 0-255 floats, NaN, inf) and masks (empty, full,
0/255). Every call must end in a result of the input's shape and dtype with values in range and a
binary mask that contains the mask given, or in a ``ValueError``/``TypeError`` whose message names
the problem. Few examples per host (``max_examples``) so that CI stays fast; the outcome counts are
printed at the end of the module (``pytest -s``).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_frontend_augment import write_tiny_bank

from cai_aug.io.demo_data import demo_images

EXAMPLES = 20
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
MESSAGES: dict[str, set[str]] = collections.defaultdict(set)
# An error message must say what is wrong with the input: one of these words, in any case.
NAMES_THE_PROBLEM = re.compile(
    r"shape|channel|dtype|uint8|float|range|\[0, 1\]|normalis|nan|infinite|smaller|side|mask|image|tensor|numpy",
    re.IGNORECASE,
)

# Repeated entries weight the draws towards inputs the hosts accept, so valid calls are explored too.
sides = st.sampled_from([1, 8, 15, 16, 17, 40, 40, 64, 97, 97])
channels = st.sampled_from([1, 2, 3, 3, 3, 4])
dtypes = st.sampled_from(["uint8", "uint8", "float32", "float32", "float64", "float16", "int32", "bool"])
ranges = st.sampled_from(["unit", "unit", "unit", "overshoot", "overshoot", "normalised", "0-255", "nan", "inf"])
mask_kinds = st.sampled_from(["empty", "full", "0/255", "none"])


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bank(tmp_path_factory.mktemp("bank"))


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    for host, counts in sorted(OUTCOMES.items()):
        print(
            f"\nfuzz {host}: {sum(counts.values())} calls, " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        )
        print("\n".join(f"  {message}" for message in sorted(MESSAGES[host])))


def _values(height: int, width: int, count: int, value_range: str, seed: int) -> np.ndarray:
    """``(count, H, W)`` float64 values of the requested kind, from demo images where they fit."""
    generator = np.random.default_rng(seed)
    base = generator.uniform(0, 1, (count, height, width))
    if min(height, width) >= 16:
        demo = demo_images(1, max(height, width), seed=seed % 5)[0].numpy().astype(np.float64)
        base = np.resize(demo[:, :height, :width], (count, height, width)) if count <= 3 else base
    if value_range == "overshoot":
        base = base * 1.004
    elif value_range == "normalised":
        base = (base - 0.45) / 0.225
    elif value_range == "0-255":
        base = base * 255
    elif value_range in ("nan", "inf"):
        base = base.copy()
        base[0, height // 2, width // 2] = np.nan if value_range == "nan" else np.inf
    return base


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return (np.nan_to_num(np.clip(values, 0, 1)) * 255).round().astype(np.uint8)
    if dtype == "int32":
        return np.clip(np.nan_to_num(values * 255), -(2**31), 2**31 - 1).astype(np.int32)
    if dtype == "bool":
        return np.nan_to_num(values) > 0.5
    return values.astype(dtype)


def _mask(height: int, width: int, kind: str) -> np.ndarray | None:
    if kind == "none":
        return None
    mask = np.zeros((height, width), np.uint8)
    if kind == "full":
        mask[:] = 1
    elif kind == "0/255":
        mask[: height // 3, : width // 3] = 255
    return mask


def _run(host: str, call) -> None:
    """Run one fuzz call; record and check its outcome."""
    try:
        call()
    except (ValueError, TypeError) as error:
        message = str(error)
        assert NAMES_THE_PROBLEM.search(message), f"{host}: unclear {type(error).__name__}: {message!r}"
        OUTCOMES[host][type(error).__name__] += 1
        MESSAGES[host].add(f"{type(error).__name__}: {message[:100]}")
        return
    OUTCOMES[host]["valid"] += 1


def _check_image(out: np.ndarray | torch.Tensor, given: np.ndarray | torch.Tensor) -> None:
    assert out.shape == given.shape and out.dtype == given.dtype
    values = out.float() if isinstance(out, torch.Tensor) else out.astype(np.float64)
    if not (isinstance(out, torch.Tensor) and out.dtype == torch.uint8) and out.dtype != np.uint8:
        assert float(values.min()) >= 0 and float(values.max()) <= 1
    assert bool(np.isfinite(np.asarray(values)).all())


def _check_mask(out, given, value: float) -> None:
    out = np.asarray(out)
    assert out.shape == given.shape and out.dtype == given.dtype
    assert set(np.unique(out).tolist()) <= {0, 1, value, 255}
    assert ((out > 0) | (given == 0)).all()  # the mask given is kept


@SETTINGS
@given(h=sides, w=sides, c=channels, dtype=dtypes, value_range=ranges, mask_kind=mask_kinds, seed=st.integers(0, 99))
def test_fuzz_albumentations(bank, h, w, c, dtype, value_range, mask_kind, seed) -> None:
    A = pytest.importorskip("albumentations")
    from cai_aug.frontends.albumentations import CrossDomainAnomaly

    image = _cast(np.moveaxis(_values(h, w, c, value_range, seed), 0, -1), dtype)
    mask = _mask(h, w, mask_kind)

    def call() -> None:
        data = {"image": image} if mask is None else {"image": image, "mask": mask}
        out = A.Compose([CrossDomainAnomaly(bank=bank, p=1.0)], seed=seed)(**data)
        _check_image(out["image"], image)
        if mask is not None:
            _check_mask(out["mask"], mask, 255 if mask_kind == "0/255" else 1)

    _run("albumentations", call)


@SETTINGS
@given(h=sides, w=sides, c=channels, dtype=dtypes, value_range=ranges, batched=st.booleans(), seed=st.integers(0, 99))
def test_fuzz_anomalib_generator(bank, h, w, c, dtype, value_range, batched, seed) -> None:
    from cai_aug.frontends.anomalib import CAIAnomalyGenerator

    values = _cast(_values(h, w, c * (2 if batched else 1), value_range, seed), dtype)
    image = torch.from_numpy(values).reshape((2, c, h, w) if batched else (c, h, w))

    def call() -> None:
        augmented, mask = CAIAnomalyGenerator(bank, probability=1.0, seed=seed)(image)
        _check_image(augmented, image)
        assert mask.shape == (*image.shape[:-3], 1, h, w) and set(mask.unique().tolist()) <= {0.0, 1.0}

    _run("anomalib", call)


@SETTINGS
@given(h=sides, w=sides, c=channels, dtype=dtypes, value_range=ranges, mask_kind=mask_kinds, seed=st.integers(0, 99))
def test_fuzz_kornia(bank, h, w, c, dtype, value_range, mask_kind, seed) -> None:
    K = pytest.importorskip("kornia.augmentation")
    from cai_aug.frontends.kornia import RandomCrossDomainAnomaly

    image = torch.from_numpy(_cast(_values(h, w, 2 * c, value_range, seed), dtype)).reshape(2, c, h, w)
    mask = _mask(h, w, "empty" if mask_kind == "none" else mask_kind)
    masks = torch.from_numpy(np.stack([mask, mask])[:, None].astype(np.float32))

    def call() -> None:
        torch.manual_seed(seed)
        sequential = K.AugmentationSequential(RandomCrossDomainAnomaly(bank, p=1.0), data_keys=["input", "mask"])
        out, out_mask = sequential(image, masks)
        _check_image(out, image)
        _check_mask(out_mask.numpy(), masks.numpy(), 255 if mask_kind == "0/255" else 1)

    _run("kornia", call)


@SETTINGS
@given(h=sides, w=sides, c=channels, dtype=dtypes, value_range=ranges, mask_kind=mask_kinds, seed=st.integers(0, 99))
def test_fuzz_torchvision(bank, h, w, c, dtype, value_range, mask_kind, seed) -> None:
    pytest.importorskip("torchvision")
    from torchvision import tv_tensors

    from cai_aug.frontends.torchvision import RandomCrossDomainAnomaly

    image = tv_tensors.Image(torch.from_numpy(_cast(_values(h, w, c, value_range, seed), dtype)))
    mask = _mask(h, w, mask_kind)

    def call() -> None:
        op = RandomCrossDomainAnomaly(bank, p=1.0, seed=seed)
        if mask is None:
            out = op(image)
        else:
            out, out_mask = op(image, tv_tensors.Mask(torch.from_numpy(mask)))
            assert isinstance(out_mask, tv_tensors.Mask)
            _check_mask(out_mask.numpy(), mask, 255 if mask_kind == "0/255" else 1)
        assert isinstance(out, tv_tensors.Image)
        _check_image(out.as_subclass(torch.Tensor), image.as_subclass(torch.Tensor))

    _run("torchvision", call)
