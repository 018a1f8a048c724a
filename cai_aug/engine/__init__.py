"""The CAI engine: Algorithm 1 of the paper as small batched, device-agnostic torch functions.

One module per step, each a public function ``(B, ...)`` tensors in and out:

- ``config``: ``CAIConfig``, every engine option with its default and its check;
- ``rng``: keyed randomness (a decision is a pure function of the sample's key and a stream);
- ``bank``: ``AnomalyBank``, the sources in flat device tensors;
- ``foreground``: ``yn = m(In)`` estimators and their cache;
- ``matching``: STM/MAS, ``size_ratios`` (the R matrix) and ``plan_synthesis`` (type, source, R');
- ``location``: ILS, ``place_pattern`` (a uniform valid centre, shrinking R' when none fits);
- ``resample``: sources into per-sample canvases, canvases in and out of images;
- ``injection``: PE, ``inject`` (Omega and the Poisson solve on canvases) and ``injection_mask``;
- ``masks``: difference masks;
- ``cai``: ``CAI``, one pseudo anomaly per image (plan, place, inject, mask, redraw on failure);
- ``algorithm1``: ``synthesize``, the offline multi-scale Algorithm 1 for one target.

The engine imports the Poisson solver and the io layer below it, never a front end or the command line.
"""
