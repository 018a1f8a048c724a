"""The paper's UNet benchmark: train DRAEM's discriminative UNet on normal + pseudo-anomalous images
from one synthesiser and evaluate it on the real test set of an MVTec-layout dataset.

Run ``python -m benchmarks.detector --help`` from the repository root.
"""
