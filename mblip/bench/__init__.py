"""Side-by-side performance comparisons: `python -m mblip.bench` runs them all and writes BENCHMARKS.md."""
