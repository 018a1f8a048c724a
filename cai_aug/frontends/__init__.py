"""Front ends: CAI inside the hosts users train with (no algorithm here).

``dataset`` (``CAIDataset``), ``augment`` (``CAIAugment``), ``albumentations`` (``CrossDomainAnomaly``),
``anomalib`` (``CAIAnomalyGenerator``), ``offline`` (folder in, MVTec-style folder out), ``ray`` (Ray
Data) and ``rembg`` (a foreground plugin). Each is imported on use, so optional stacks stay optional.
"""
