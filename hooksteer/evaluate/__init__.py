"""Judges and the AxBench-style evaluation protocol."""
