"""Benchmarks; each writes its latest result under ``bench/results/``."""
