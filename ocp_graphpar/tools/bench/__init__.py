"""Benchmarks: communication, memory, load and time, ours side by side with upstream."""
