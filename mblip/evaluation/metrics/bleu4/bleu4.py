"""BLEU-4 with the mBLIP paper's caption tokenization, as an `evaluate` module: `evaluate.load(metric_path("bleu4"))` (`from mblip.evaluation.metrics import metric_path`).

Run from the repository root (the module calls `eval.metrics.bleu4`, the package's plain function).
"""

import datasets
import evaluate

from mblip.evaluation.metrics import bleu4


_DESCRIPTION = """Corpus BLEU-4 (pycocoevalcap's Bleu(4), closest reference length) after the paper's caption
tokenization: word segmentation for zh, ja and th, NFC normalisation, then the PTB tokenizer."""

_KWARGS = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]`): the reference captions of each image.
    lang (`str`): the captions' language code.
Returns:
    {"bleu4": float}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Bleu4(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Papineni et al., BLEU: a Method for Automatic Evaluation of Machine Translation, ACL 2002",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, lang="en"):
        return {"bleu4": bleu4(list(predictions), [list(r) for r in references], lang)}
