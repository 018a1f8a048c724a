"""Constants shared by the scheduling, the torch CG loop and the CuPy backend of :mod:`cai_aug.poisson`.

One place for numbers two modules must agree on (the CuPy path must stop exactly where the torch
path stops, and both must respect the CUDA launch limit).
"""

from __future__ import annotations

# CUDA grids take at most this many blocks in y: one (sample, channel) plane per y index
MAX_PLANES = 65535
# the host checks "all converged?" this often; convergence itself is tracked on the device
CHECK_EVERY = 4
# CG stops at this fraction of rtol, so that the error against the exact solution is within rtol too:
# error / residual ratios up to about 15 were measured on random masks that leave only a few known
# pixels (nearly singular systems); this costs one or two iterations more than stopping at rtol
STOP_FACTOR = 0.1
# with ``atol``, a plane stops once the largest pixel change of its last CG step is below this fraction
# of atol: the multigrid-preconditioned steps shrink by about 0.3..0.5 per iteration, so the error
# left is about one step or less. Measured at 256x256 against a 1e-11 solve on 126 cases (discs 6..240
# px, stars, ring, border, corner, 1-px lines, 3-px bar, noise masks; smooth, noisy and black-and-
# white images; normal and mixed): largest error 0.49/255 at factor 0.5, but 1.09/255 at factor 1.0
ATOL_STEP_FACTOR = 0.5
