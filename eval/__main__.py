"""`python -m eval --model DIR_OR_ID --task TASK --data_dir ... --image_dir ...`; see eval/run.py."""

from .run import main


if __name__ == "__main__":
    main()
