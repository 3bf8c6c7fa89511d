"""Benchmarks. Run each as a module, e.g. `python -m benchmarks.coordination`."""
