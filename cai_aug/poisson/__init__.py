"""Batched masked Poisson blending (Pérez et al. 2003) by multigrid-preconditioned conjugate gradient.

Public API: :func:`poisson_blend` (whole images), :func:`poisson_blend_canvases` (per-sample canvases
cut around the patterns) and :class:`PoissonStats`. Modules, top to bottom:

- :mod:`~cai_aug.poisson.blend`: the entry points and the schedule (ROIs, size buckets, memory chunks,
  backend choice and fallback);
- :mod:`~cai_aug.poisson.system`: the masked linear system (eq. 7) on canvases;
- :mod:`~cai_aug.poisson.pcg`: batched preconditioned conjugate gradient (torch);
- :mod:`~cai_aug.poisson.multigrid`: the aggregation-multigrid V-cycle (torch);
- :mod:`~cai_aug.poisson.cupy_backend`: the CG loop and V-cycle as CUDA kernels (``kernels/*.cu``);
- :mod:`~cai_aug.poisson.constants`: numbers the torch and CuPy paths share;
- :mod:`~cai_aug.poisson.scratch`: CPU scratch arrays reused from one solve to the next.

This package imports nothing else of ``cai_aug``.
"""

from cai_aug.poisson.blend import PoissonStats, poisson_blend, poisson_blend_canvases

__all__ = ["PoissonStats", "poisson_blend", "poisson_blend_canvases"]
