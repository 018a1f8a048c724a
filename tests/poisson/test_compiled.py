"""The compiled CPU solve (kernels/cpu_kernel.cpp) computes what the torch CG loop computes."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from test_poisson import batch_masks, disc, images, reference_blend, rel_error

from cai_aug.poisson import cpu_kernel, poisson_blend
from cai_aug.poisson import pcg as poisson_pcg
from cai_aug.poisson.system import assemble

needs_compiled = pytest.mark.skipif(not cpu_kernel.available(), reason="no C++ compiler: the torch loop solves")


def _system(masks: np.ndarray, dtype: torch.dtype, mode: str = "normal", seed: int = 20):
    n, h, w = masks.shape
    t, s = images(n, 3, h, w, seed=seed)
    omega = torch.from_numpy(masks)[:, None]
    return assemble(t.to(dtype), s.to(dtype), omega, torch.ones_like(omega), mode)


def _masks(h: int, w: int) -> np.ndarray:
    ring = disc(h, w, h / 2, w / 2, min(h, w) / 2 - 2) & ~disc(h, w, h / 2, w / 2, min(h, w) / 6)
    line = np.zeros((h, w), dtype=bool)
    line[2 : h - 2, w // 3] = True
    corner = disc(h, w, h - 1, w - 1, min(h, w) / 2)
    noise = np.random.default_rng(3).random((h, w)) < 0.4
    return np.stack([ring, line, corner, noise])


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("atol", [None, 1 / 255], ids=["exact", "fast"])
@pytest.mark.parametrize("mode", ["normal", "mixed"])
@pytest.mark.parametrize("size", [(61, 57), (8, 7), (1, 30)], ids=["odd", "coarsest-only", "one-row"])
def test_compiled_solve_takes_the_torch_loops_iterations(monkeypatch, dtype, atol, mode, size) -> None:
    masks = _masks(*size) if size[0] > 2 else (np.arange(size[1]) % 3 != 0)[None, None]
    system = _system(masks, dtype, mode)
    x, it, rel = cpu_kernel.pcg(system, 1e-4, 100, atol)
    monkeypatch.setattr(cpu_kernel, "USE", False)
    x_ref, it_ref, rel_ref = poisson_pcg.pcg(system, 1e-4, 100, atol)
    assert x.dtype == dtype and rel.dtype == dtype
    # same algorithm, other rounding: an iteration more or less where a plane stops right at a threshold
    assert (it - it_ref).abs().max() <= 1
    assert torch.allclose(x, x_ref, atol=2e-4 if atol is None else 2 / 255)
    assert atol is not None or (rel <= 1e-4).all()


@needs_compiled
def test_the_cpu_path_solves_the_whole_batch_in_one_compiled_call(monkeypatch) -> None:
    calls = []
    solve = cpu_kernel.blend
    monkeypatch.setattr(cpu_kernel, "blend", lambda *args, **kw: calls.append(1) or solve(*args, **kw))
    masks = torch.from_numpy(batch_masks())[:, None]  # several multigrid depths: buckets for the torch loop
    t, s = images(len(masks), 3, 48, 48, seed=21)
    poisson_blend(t.float(), s.float(), masks)
    assert len(calls) == 1


@needs_compiled
@pytest.mark.parametrize("atol", [None, 1 / 255], ids=["exact", "fast"])
@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_the_compiled_batch_call_matches_the_torch_loops_buckets(monkeypatch, mode, atol) -> None:
    masks = torch.from_numpy(batch_masks())[:, None]
    t, s = images(len(masks), 3, 48, 48, seed=24)
    out, stats = poisson_blend(t.float(), s.float(), masks, mode, atol=atol, return_stats=True)
    monkeypatch.setattr(cpu_kernel, "USE", False)
    ref, ref_stats = poisson_blend(t.float(), s.float(), masks, mode, atol=atol, return_stats=True)
    assert (stats.iterations - ref_stats.iterations).abs().max() <= 1
    assert torch.allclose(out, ref, atol=2e-4 if atol is None else 2 / 255)


@needs_compiled
def test_compiled_solve_matches_spsolve_on_a_batch() -> None:
    masks = batch_masks()
    t, s = images(len(masks), 3, 48, 48, seed=22)
    out = poisson_blend(t.float(), s.float(), torch.from_numpy(masks)[:, None])
    for i, m in enumerate(masks):
        assert rel_error(out[i], reference_blend(t[i].numpy(), s[i].numpy(), m, "normal"), m) <= 1e-4, i


@needs_compiled
def test_two_threads_give_bitwise_the_one_thread_result() -> None:
    masks = torch.from_numpy(batch_masks())[:, None]
    t, s = images(len(masks), 3, 48, 48, seed=26)
    out1, stats1 = poisson_blend(t.float(), s.float(), masks, return_stats=True)
    torch.set_num_threads(2)
    out2, stats2 = poisson_blend(t.float(), s.float(), masks, return_stats=True)
    assert torch.equal(out1, out2) and torch.equal(stats1.iterations, stats2.iterations)


def test_samples_are_split_into_parts_of_about_equal_area() -> None:
    rois = [(k, 0, 0, side, side) for k, side in enumerate([100, 10, 10, 60, 60, 10])]
    parts = cpu_kernel._split(rois, 2)
    assert sorted(k for part in parts for k in part) == list(range(6))
    assert [sum(rois[k][3] * rois[k][4] for k in part) for part in parts] == [10000, 7200 + 300]


def test_a_failed_build_falls_back_to_the_torch_loop(monkeypatch, caplog) -> None:
    masks = torch.from_numpy(batch_masks())[:, None]
    t, s = images(len(masks), 3, 48, 48, seed=23)
    monkeypatch.setattr(cpu_kernel, "USE", False)
    expected = poisson_blend(t.float(), s.float(), masks)
    monkeypatch.setattr(cpu_kernel, "USE", True)
    monkeypatch.delenv(cpu_kernel.ENV_SWITCH, raising=False)
    monkeypatch.setattr(cpu_kernel, "_state", {})
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: None)
    with caplog.at_level(logging.INFO, logger=cpu_kernel.__name__):
        out = poisson_blend(t.float(), s.float(), masks)
    assert torch.equal(out, expected)
    assert "unavailable" in caplog.text


def test_the_environment_switch_turns_the_compiled_solve_off(monkeypatch) -> None:
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "0")
    assert not cpu_kernel.available()


@needs_compiled
def test_a_channels_last_batch_is_read_and_written_in_place_with_the_same_result() -> None:
    masks = torch.from_numpy(batch_masks())[:, None]
    t, s = images(len(masks), 3, 48, 48, seed=25)
    t, s = t.float(), s.float()
    strided = [a.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) for a in (t, s)]
    assert not strided[0].is_contiguous()
    assert torch.equal(poisson_blend(*strided, masks), poisson_blend(t, s, masks))


@needs_compiled
def test_a_fresh_cache_folder_gets_a_build_that_loads(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cpu_kernel, "_cache_dirs", lambda: [tmp_path / "missing" / "deeper", tmp_path])
    monkeypatch.setattr(cpu_kernel, "_state", {})
    assert cpu_kernel.available()
    assert [p.suffix for p in tmp_path.rglob("*") if p.is_file()] == [".so"]  # no half-written file left


def _fresh(monkeypatch, dirs) -> None:
    monkeypatch.setattr(cpu_kernel, "_cache_dirs", lambda: dirs)
    monkeypatch.setattr(cpu_kernel, "_state", {})
    monkeypatch.delenv(cpu_kernel.ENV_SWITCH, raising=False)


def test_a_new_cache_folder_is_created_private(monkeypatch, tmp_path) -> None:
    _fresh(monkeypatch, [tmp_path / "cache"])
    cpu_kernel.available()
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700


def test_a_folder_others_may_write_is_refused_with_one_warning(monkeypatch, tmp_path, caplog) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    _fresh(monkeypatch, [shared])
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
        assert not cpu_kernel.available()
        assert not cpu_kernel.available()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert list(shared.iterdir()) == []  # nothing built there


@needs_compiled
def test_a_library_others_may_write_is_never_loaded(monkeypatch, tmp_path, caplog) -> None:
    folder = tmp_path / "cache"
    _fresh(monkeypatch, [folder])
    assert cpu_kernel.available()
    (lib,) = folder.glob("*.so")
    # a new file in its place, never the loaded one rewritten: truncating a mapped library makes this
    # process die with SIGBUS when the loader touches it again (at exit at the latest)
    lib.unlink()
    lib.write_bytes(b"planted")  # a load attempt would fail with an OSError, not the refusal
    lib.chmod(0o666)
    _fresh(monkeypatch, [folder])
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
        assert not cpu_kernel.available()
    assert "writable by others" in caplog.text


@needs_compiled
def test_a_build_under_a_group_writable_umask_is_private_and_loads_again(monkeypatch, tmp_path, caplog) -> None:
    folder = tmp_path / "cache"
    _fresh(monkeypatch, [folder])
    old = os.umask(0o002)
    try:
        assert cpu_kernel.available()
    finally:
        os.umask(old)
    (lib,) = folder.glob("*.so")
    assert lib.stat().st_mode & 0o022 == 0
    _fresh(monkeypatch, [folder])  # a new process finds the build and loads it, without a warning
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
        assert cpu_kernel.available()
    assert not caplog.records


needs_root = pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown to another user")


@needs_root
def test_a_folder_of_another_user_is_refused_with_one_warning(monkeypatch, tmp_path, caplog) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 12345, 12345)
    _fresh(monkeypatch, [theirs])
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
        assert not cpu_kernel.available()
    assert "no cache folder owned by this user" in caplog.text and list(theirs.iterdir()) == []


@needs_root
@needs_compiled
def test_a_library_of_another_user_is_never_loaded(monkeypatch, tmp_path, caplog) -> None:
    folder = tmp_path / "cache"
    _fresh(monkeypatch, [folder])
    assert cpu_kernel.available()
    (lib,) = folder.glob("*.so")
    planted = lib.read_bytes()
    lib.unlink()  # a new file in its place (see above: never rewrite the loaded one)
    lib.write_bytes(planted)
    lib.chmod(0o755)
    os.chown(lib, 12345, 12345)
    _fresh(monkeypatch, [folder])
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
        assert not cpu_kernel.available()
    assert "not owned by this user" in caplog.text
