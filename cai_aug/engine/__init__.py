"""The CAI engine: Algorithm 1 of the paper as small batched, device-agnostic torch functions.

``rng`` (keyed randomness), ``bank`` (sources), ``foreground``, ``matching`` (STM/MAS), ``location``
(ILS), ``resample`` (sources into canvases), ``masks`` (difference masks), ``cai`` (the ``CAI`` engine)
and ``algorithm1`` (``synthesize``: the offline multi-scale Algorithm 1). The engine imports the
Poisson solver and the io layer below it, never a front end or the command line.
"""
