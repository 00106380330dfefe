"""Side-by-side performance comparisons: `python -m bench` runs them all and writes BENCHMARKS.md."""
