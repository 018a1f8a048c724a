"""Front ends: CAI inside the hosts users train with (no algorithm here).

``dataset`` (``CAIDataset``), ``augment`` (``CAIAugment``), ``albumentations`` (``CrossDomainAnomaly``),
``anomalib`` (``CAIAnomalyGenerator``, ``CAIDraem``), ``kornia`` and ``torchvision`` (``RandomCrossDomainAnomaly``),
``offline`` (folder in, MVTec-style folder out) and ``ray`` (Ray Data), over the shared logic of ``common``.
Each is imported on use, so optional stacks stay optional.
"""
