"""Public path of the anomalib adapter: ``cai_aug.anomalib.CAIAnomalyGenerator``."""

from cai_aug.frontends.anomalib import CAIAnomalyGenerator

__all__ = ["CAIAnomalyGenerator"]
