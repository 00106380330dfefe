"""`python -m eval --model DIR_OR_ID --task TASK --data_dir ... --image_dir ...`: the benchmarks of the mBLIP paper, per
language. The code is the package's `mblip.evaluation` (readers, metrics, prompts, reports); eval/README.md gives each
benchmark's command and files."""

from mblip.evaluation.run import main


if __name__ == "__main__":
    main()
