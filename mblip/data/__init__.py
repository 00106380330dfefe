"""The task-mix builder: mBLIP's language table, sampling rules, NLLB translation and quality filters.

    python -m mblip.data.translate --input en.jsonl --output mix/ --languages all

Modules: ``languages`` (table, sampling, language identification), ``templates`` (prompt templates per task),
``filters`` (quality filters), ``inputs`` (reading and validating input rows), ``storage`` (atomic files and shards),
``translate`` (translation engine, pipeline and command line), ``tasks`` (English rows of the official tasks from
their source files), ``hard_negatives`` (CLIP hard negatives for caption matching), ``tiny_nllb`` (a random
NLLB-shaped model for offline runs).
"""
