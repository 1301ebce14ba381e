"""Analyses built on hooksteer: multi-behaviour interactions, SAE comparisons, token-level effects."""
