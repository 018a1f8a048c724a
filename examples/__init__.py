"""Runnable examples of cai_aug (not part of the installed package)."""
