"""anomalib's own ``Folder`` datamodule reads a ``write_validation_set`` folder as its test and
validation set (torchvision imports through conftest's recipe)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_frontend_augment import write_tiny_bank

pytest.importorskip("anomalib", reason="the anomalib tests need the anomalib extra: pip install -e '.[anomalib]'")

from anomalib.data import Folder  # noqa: E402

from cai_aug.frontends.validation import anomalib_folder_arguments, write_validation_set  # noqa: E402
from cai_aug.io.demo_data import write_demo_normals  # noqa: E402


def test_folder_datamodule_validates_on_the_pseudo_anomalies(tmp_path: Path) -> None:
    bank = write_tiny_bank(tmp_path / "bank")
    train = write_demo_normals(tmp_path / "train", n=2)
    held_out = write_demo_normals(tmp_path / "held_out", n=3)
    result = write_validation_set(held_out, bank, tmp_path / "val", per_image=2, seed=0)
    n_anomalous = sum(result.anomalies.values())
    datamodule = Folder(
        name="cai-validation",
        root=tmp_path,
        normal_dir=train,
        train_batch_size=2,
        eval_batch_size=2,
        num_workers=0,
        **anomalib_folder_arguments(tmp_path / "val"),
    )
    datamodule.setup()
    for data in (datamodule.val_data, datamodule.test_data):
        samples = data.samples
        anomalous = samples[samples.label_index == 1]
        assert len(samples) == 3 + n_anomalous and len(anomalous) == n_anomalous
        # every pseudo anomaly is paired with its own mask
        for image, mask in zip(anomalous.image_path, anomalous.mask_path):
            assert Path(mask).name == f"{Path(image).stem}_mask.png"
    item = datamodule.val_data[int(anomalous.index[0])]
    assert item.gt_label == 1 and item.gt_mask.bool().any() and item.gt_mask.shape[-2:] == item.image.shape[-2:]
    assert len(datamodule.train_data) == 2
