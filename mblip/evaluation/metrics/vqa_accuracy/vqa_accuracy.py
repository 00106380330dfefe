"""VQA accuracy with the standard answer normalisation, as an `evaluate` module:
`evaluate.load(metric_path("vqa_accuracy"))` (`from mblip.evaluation.metrics import metric_path`).

Also returns exact and relaxed match (the official mBLIP accuracy for xGQA, XVNLI, MaRVL and POPE).
"""

import datasets
import evaluate

from mblip.evaluation.metrics import exact_match, relaxed_match, vqa_accuracy


_DESCRIPTION = """VQA accuracy: min(1, #annotators giving the answer / 3), averaged over leave-one-out subsets of the
reference answers, after the VQA evaluation's answer normalisation; plus exact match and relaxed match (the
prediction starts or ends with a reference) after the same normalisation."""

_KWARGS = """
Args:
    predictions (`list[str]`): one generated answer per question.
    references (`list[list[str]]`): the reference answers of each question (one gold label is a list of one).
    normalize (`bool`, default True): apply the VQA answer normalisation.
Returns:
    {"vqa_accuracy": float, "exact_match": float, "relaxed_match": float}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Antol et al., VQA: Visual Question Answering, ICCV 2015",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, normalize=True):
        predictions, references = list(predictions), [list(r) for r in references]
        return {
            "vqa_accuracy": vqa_accuracy(predictions, references, normalize=normalize),
            "exact_match": exact_match(predictions, references, normalize=normalize),
            "relaxed_match": relaxed_match(predictions, references, normalize=normalize),
        }
