"""Public path of the Albumentations op: ``cai_aug.albumentations.CrossDomainAnomaly``."""

from cai_aug.frontends.albumentations import CrossDomainAnomaly

__all__ = ["CrossDomainAnomaly"]
