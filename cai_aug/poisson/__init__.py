"""Batched masked Poisson blending: :func:`poisson_blend` and its solver statistics."""

from cai_aug.poisson.solver import PoissonStats, poisson_blend

__all__ = ["PoissonStats", "poisson_blend"]
