"""Ray Data front end: same output as the local engine, whatever the pool, and exact resumption.

One local Ray instance (num_cpus=2) serves the whole module; every run uses 8 normal images of 64x64
(2 of them in a subfolder) with 2 pseudo anomalies each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'cai_aug[ray]')")

from cai_aug.cli import build_parser  # noqa: E402
from cai_aug.engine.bank import AnomalyBank  # noqa: E402
from cai_aug.engine.cai import CAI  # noqa: E402
from cai_aug.frontends.offline import MANIFEST, OutputFolder, run_local  # noqa: E402
from cai_aug.frontends.ray import CAIMapper, pool_resources, relative_key, run_ray, write_batch  # noqa: E402
from cai_aug.io.demo_data import demo_images, write_demo_bank, write_demo_normals  # noqa: E402
from cai_aug.io.images import read_image, read_mask, to_uint8_array, write_image  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PER_IMAGE = 2
SEED = 11


@pytest.fixture(scope="module")
def ray_instance():
    previous = os.environ.get("RAY_TMPDIR")
    os.environ.setdefault("RAY_TMPDIR", "/tmp")  # Ray's socket paths must stay short
    # the workers import cai_aug and this module (FailingMapper) whatever PYTHONPATH pytest ran with
    paths = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "frontends"), os.environ.get("PYTHONPATH", "")]
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_data")
    bank = write_demo_bank(root / "bank", per_class=3)
    normal = write_demo_normals(root / "normal", n=8, size=64, seed=2)
    (normal / "sub").mkdir()  # nested keys: "sub/normal_006.png"
    for name in ("normal_006.png", "normal_007.png"):
        (normal / name).rename(normal / "sub" / name)
    # a folder of images of two sizes (ragged numpy batches)
    ragged = write_demo_normals(root / "ragged", n=1, size=64, seed=2)
    write_image(ragged / "wide.png", demo_images(1, 80, seed=5)[0, :, 16:64, :])
    return {"bank": bank, "normal": normal, "ragged": ragged, "root": root}


def synth_args(data, out, *extra: str):
    argv = ["synth", "--normal", str(data["normal"]), "--bank", str(data["bank"]), "--out", str(out)]
    argv += ["--per-image", str(PER_IMAGE), "--seed", str(SEED), *extra]
    return build_parser().parse_args(argv)


@pytest.fixture(scope="module")
def engine(data):
    return CAI(AnomalyBank.from_folder(data["bank"]), seed=SEED)


def ray_run(normal, engine, out, **options):
    """`cai-aug synth --engine ray` as the command line calls it."""
    return run_ray(normal, engine, out, per_image=PER_IMAGE, progress=False, **options)


@pytest.fixture(scope="module")
def reference(data):
    """The local engine's uninterrupted run."""
    from cai_aug.cli.synth import make_engine

    out = data["root"] / "local"
    args = synth_args(data, out)
    run_local(args.normal, make_engine(args), out, per_image=PER_IMAGE, progress=False)
    return out


def manifest(folder: Path, strict: bool = True) -> list[dict]:
    records = []
    for line in (folder / MANIFEST).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if strict:
                raise
    return records


def assert_same_run(folder: Path, reference: Path, *, same_order: bool = True) -> None:
    """Same records (decisions exact, solver residual to float noise), same file names, pixels within
    1/255 and masks within 0.1 %."""
    got, want = manifest(folder), manifest(reference)
    if not same_order:
        got, want = sorted(got, key=lambda r: r["image"]), sorted(want, key=lambda r: r["image"])
    assert [r["image"] for r in got] == [r["image"] for r in want]
    assert len({r["image"] for r in got}) == len(got), "a record is duplicated"
    for g, w in zip(got, want):
        assert g == w
    names = sorted(p.name for p in (folder / "images").iterdir())
    assert names == sorted(p.name for p in (reference / "images").iterdir())
    assert sorted(p.name for p in (folder / "masks").iterdir()) == sorted(
        p.name for p in (reference / "masks").iterdir()
    )
    for record in want:
        a = read_image(folder / record["image"]).astype(int)
        b = read_image(reference / record["image"]).astype(int)
        assert np.abs(a - b).max() <= 1, record["image"]
        assert (read_mask(folder / record["mask"]) != read_mask(reference / record["mask"])).mean() <= 1e-3
    assert (folder / "preview.png").is_file()


def test_reference_run_is_complete(reference):
    records = manifest(reference)
    assert len(records) == 8 * PER_IMAGE
    assert {r["normal"] for r in records} >= {"sub/normal_007.png", "normal_000.png"}


@pytest.mark.parametrize(("workers", "batch"), [(1, 5), (2, 3)])
def test_ray_matches_local_engine(ray_instance, data, engine, reference, workers, batch):
    out = data["root"] / f"ray_{workers}_{batch}"
    output = ray_run(data["normal"], engine, out, workers=workers, batch_size=batch)
    assert output.root == out
    assert_same_run(out, reference)


def test_mapper_on_read_images_with_ragged_sizes(ray_instance, data, tmp_path):
    """The README pipeline: read_images -> map_batches(CAIMapper) -> write_batch on the driver, with
    images of two sizes in one batch (object arrays in and out); records as the engine makes them."""
    from cai_aug.frontends.offline import make_records, manifest_record, read_normal

    dataset = ray.data.read_images(str(data["ragged"]), include_paths=True, mode="RGB")
    mapped = dataset.map_batches(
        CAIMapper,
        batch_size=4,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,
        fn_constructor_kwargs={
            "bank": str(data["bank"]),
            "per_image": PER_IMAGE,
            "seed": SEED,
            "root": str(data["ragged"]),
        },
    )
    output = OutputFolder(tmp_path / "out")
    batch_shapes = []
    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        assert set(batch) >= {"image", "mask", "record", "label", "image_key", "index", "stem", "source_class"}
        batch_shapes.append({np.asarray(image).shape for image in batch["image"]})
        write_batch(output, batch)
    assert {(64, 64, 3), (48, 80, 3)} in batch_shapes  # both sizes in one batch
    got = {r["image"]: r for r in output.records()}
    cai = CAI(AnomalyBank.from_folder(data["bank"]), seed=SEED)
    keys = sorted(p.name for p in data["ragged"].iterdir())
    want = [
        (manifest_record(record, SEED), record.anomaly)
        for key in keys
        for record in make_records(cai, read_normal(data["ragged"], key).pixels, key, PER_IMAGE)
    ]
    assert sorted(got) == sorted(record["image"] for record, _ in want)
    for record, anomaly in want:
        other = dict(got[record["image"]])
        assert other == record
        pixels = read_image(output.root / record["image"]).astype(int)
        assert np.abs(pixels - to_uint8_array(anomaly.image).astype(int)).max() <= 1
        assert (read_mask(output.root / record["mask"]) != (anomaly.mask[0] > 0.5).numpy()).mean() <= 1e-3


class FailingMapper(CAIMapper):
    """A worker that crashes on its 4th image (one of the two actors gets at least 4 of the 8), once the
    driver has recorded finished batches, so the crash leaves a partial manifest behind."""

    images_done = 0

    def synthesize(self, image, key, skip=frozenset()):
        if self.images_done == 3:
            manifest_path = self.out / MANIFEST
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (manifest_path.exists() and manifest_path.stat().st_size):
                time.sleep(0.05)
            raise RuntimeError("worker crashed")
        self.images_done += 1
        return super().synthesize(image, key, skip)


def test_ray_resume_after_worker_crash(ray_instance, data, engine, reference):
    out = data["root"] / "ray_crash"
    with pytest.raises(Exception, match="worker crashed"):
        ray_run(data["normal"], engine, out, workers=2, batch_size=1, mapper=FailingMapper)
    partial = manifest(out)
    assert 0 < len(partial) < 8 * PER_IMAGE
    # every recorded pseudo anomaly has its files
    assert all((out / r["image"]).exists() and (out / r["mask"]).exists() for r in partial)
    resumed = ray_run(data["normal"], engine, out, workers=2, batch_size=3, resume=True)
    assert len(resumed.records()) == 8 * PER_IMAGE
    assert_same_run(out, reference)


# The child's writer is slowed (so a kill can land between an image, its mask and the manifest line) and
# stops for good before its last record: the kill then always comes before the end, however fast the machine.
SLOW_WRITER = """
import sys, time
import cai_aug.io.output as output
from cai_aug.cli import main

stop_at = int(sys.argv[1])
write_image, append_line = output.write_image, output.append_line

def slow_write_image(*args, **kwargs):
    time.sleep(0.01)
    return write_image(*args, **kwargs)

def slow_append_line(path, line):
    if path.exists() and len(path.read_text().splitlines()) >= stop_at:
        time.sleep(3600)
    time.sleep(0.01)
    append_line(path, line)

output.write_image, output.append_line = slow_write_image, slow_append_line
sys.exit(main(sys.argv[2:]))
"""


def kill_synth_part_way(data, out, *, after: int, stop_at: int, resume: bool, rng) -> None:
    """Start `cai-aug synth`, SIGKILL it at a random moment once the manifest has ``after`` lines."""
    argv = ["synth", "--normal", str(data["normal"]), "--bank", str(data["bank"]), "--out", str(out)]
    argv += ["--per-image", str(PER_IMAGE), "--seed", str(SEED)] + (["--resume"] if resume else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", SLOW_WRITER, str(stop_at), *argv]
    log = out.parent / f"{out.name}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        path = out / MANIFEST
        while time.monotonic() < deadline and process.poll() is None:
            if path.exists() and len(path.read_text().splitlines()) >= after:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.03))
        assert process.poll() is None, f"the run ended before it could be killed: {log.read_text()[-2000:]}"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)


def test_local_engine_killed_then_resumed(data, reference):
    """SIGKILL a `cai-aug synth` process part-way, three times in a row; leftovers of a kill must not count as done."""
    out = data["root"] / "local_killed"
    rng = np.random.default_rng(0)
    for round_, after in enumerate((3, 7, 11)):
        kill_synth_part_way(data, out, after=after, stop_at=after + 3, resume=round_ > 0, rng=rng)
    records = manifest(out, strict=False)  # a kill may cut the last line
    assert 11 <= len(records) < 8 * PER_IMAGE
    # What a kill can leave behind: a cut manifest line, a temporary file, and (from a writer that is not
    # atomic) a truncated image under its final name; plus a recorded anomaly whose file was lost.
    todo = [r for r in manifest(reference) if r["image"] not in {x["image"] for x in records}]
    (out / todo[0]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (out / "images" / f".{Path(todo[-1]['image']).name}.tmp").write_bytes(b"partial")
    (out / records[1]["image"]).unlink()
    with (out / MANIFEST).open("a") as handle:
        handle.write(json.dumps(todo[0])[:40])
    from cai_aug.cli.synth import make_engine

    args = synth_args(data, out, "--resume")
    run_local(args.normal, make_engine(args), out, per_image=PER_IMAGE, resume=True, progress=False)
    assert_same_run(out, reference, same_order=False)


def test_pool_resources_leave_room_for_ray_data_tasks():
    # 2 CPUs, 2 actors: fractional CPUs so that Ray Data's read task still gets one (a pool of one-CPU actors
    # that takes every core waits forever for it)
    workers, cpus, gpus = pool_resources(2, "cpu", {"CPU": 2.0})
    assert (workers, gpus) == (2, 0.0) and workers * cpus <= 1.5
    assert pool_resources(None, "cpu", {"CPU": 8.0})[0] == 8
    assert pool_resources(1, "cpu", {"CPU": 2.0}) == (1, 1.5, 0.0)
    # GPU actors: one per GPU by default, a fair share of the CPUs; more workers share the GPUs
    assert pool_resources(None, "cuda", {"CPU": 16.0, "GPU": 4.0}) == (4, 3.87, 1.0)
    assert pool_resources(8, "cuda", {"CPU": 16.0, "GPU": 4.0}) == (8, 1.93, 0.5)
    with pytest.raises(RuntimeError, match="no GPU"):
        pool_resources(None, "cuda", {"CPU": 4.0})


def test_keys_of_ray_paths_are_relative_to_the_root(tmp_path):
    root = tmp_path / "normals"
    # absolute (as read_images gives for an absolute folder), relative to the driver's working folder,
    # or with a scheme: the key is the path relative to the input folder, as the local engine keys it
    assert relative_key(f"{root}/sub/a.png", str(root), root) == "sub/a.png"
    assert relative_key("normals/sub/a.png", "normals", root) == "sub/a.png"
    assert relative_key("./normals/a.png", "normals/", root) == "a.png"
    assert relative_key(f"local://{root}/a.png", str(root), root) == "a.png"
    assert relative_key(str(root / "a.png").lstrip("/"), str(root), root) == "a.png"
    with pytest.raises(ValueError, match="not under the root"):
        relative_key("elsewhere/a.png", "normals", root)


@pytest.fixture(scope="module")
def with_bad_files(data):
    """Two good images among an empty, a truncated and a too small one."""
    root = data["root"] / "with_bad"
    root.mkdir()
    for name in ("normal_000.png", "normal_001.png"):
        (root / name).write_bytes((data["normal"] / name).read_bytes())
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes((data["normal"] / "normal_000.png").read_bytes()[:300])
    write_image(root / "tiny.png", demo_images(1, 64, seed=1)[0, :, :10, :10])
    return root


def test_ray_skips_bad_inputs_as_the_local_engine_does(ray_instance, data, engine, with_bad_files):
    local = run_local(with_bad_files, engine, data["root"] / "bad_local", per_image=PER_IMAGE, progress=False)
    output = ray_run(with_bad_files, engine, data["root"] / "bad_ray", workers=2, batch_size=2)
    assert sorted(output.skipped) == ["empty.png", "tiny.png", "truncated.png"]
    skipped = (output.root / "skipped.jsonl").read_text()
    assert skipped == (local.root / "skipped.jsonl").read_text()
    assert manifest(output.root) == manifest(local.root)


def test_ray_strict_stops_at_a_bad_input(ray_instance, data, engine, with_bad_files):
    with pytest.raises(ValueError, match=r"empty.png: empty file.*strict"):
        ray_run(with_bad_files, engine, data["root"] / "bad_strict", batch_size=8, strict=True)
