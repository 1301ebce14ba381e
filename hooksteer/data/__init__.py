"""Datasets used by hooksteer (real packaged sources, or small hand-written sets labelled as such)."""
