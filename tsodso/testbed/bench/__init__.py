"""Benchmarks kept with the project (`tsodso bench ...`). Each compares against a baseline measured
in the same run, because shared machines are noisy; results go to BENCHMARKS.md."""
