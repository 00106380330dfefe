"""Benchmarks of the mBLIP paper, per language: `python -m eval --model DIR_OR_ID --task xm3600 ...`.

- `eval.tasks`: one reader per benchmark, for its released annotation files;
- `eval.metrics`: the metrics as plain functions (and as `evaluate` modules in its sub-folders);
- `eval.run`: the command line (arguments, batched generation, resumable predictions);
- `eval.report`: markdown tables, charts and the model card's `model-index`.

See eval/README.md for the command of each benchmark and where to get its files.
"""
