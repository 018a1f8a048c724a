"""CAIAnomalyGenerator as a drop-in for anomalib DRAEM's anomaly generator.

With anomalib installed it builds ``anomalib.models.Draem`` and swaps its ``augmenter``; without it, it
runs the lines of ``Draem.training_step`` that use the generator. Run:
``python examples/anomalib_draem.py [--out out/examples/anomalib_draem]``; writes ``draem_batch.png``.
"""

from __future__ import annotations

from _preamble import start  # examples run as scripts: their folder is on sys.path

from cai_aug import CAIAnomalyGenerator
from cai_aug.io.demo_data import demo_images
from cai_aug.io.preview import save_contact_sheet


def main(argv: list[str] | None = None) -> None:
    out, bank = start("anomalib_draem", __doc__, argv)

    generator = CAIAnomalyGenerator(bank, probability=0.5, seed=0)
    try:
        from anomalib.models import Draem
    except Exception as error:  # anomalib needs a working torchvision
        print(f"anomalib is not importable here ({type(error).__name__}); running DRAEM's augmenter call alone")
    else:
        model = Draem(dtd_dir=bank)  # an existing folder, so nothing is downloaded; its generator is replaced
        model.augmenter = generator
        print("Draem.augmenter is now", type(model.augmenter).__name__)

    input_image = demo_images(8, 128)  # batch.image: (B, 3, H, W) in [0, 1], DRAEM uses no Normalize
    augmented_image, anomaly_mask = generator(input_image)  # as in Draem.training_step
    sheet = save_contact_sheet(out / "draem_batch.png", augmented_image, anomaly_mask, columns=4)
    print(f"augmented {tuple(augmented_image.shape)}, masks {tuple(anomaly_mask.shape)} -> {sheet}")


if __name__ == "__main__":
    main()
