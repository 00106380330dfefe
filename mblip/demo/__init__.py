"""The synthetic multilingual world and tiny-model recipes for the offline quickstart, tests and benchmarks."""
