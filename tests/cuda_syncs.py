"""Counting host synchronisations on CUDA (a helper of the GPU tests)."""

import torch


def count_cuda_syncs(fn) -> int:
    """Host synchronisations torch reports while ``fn`` runs (``torch.cuda.set_sync_debug_mode``)."""
    import warnings

    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)
