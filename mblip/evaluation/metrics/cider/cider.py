"""CIDEr with the mBLIP paper's tokenization, as an `evaluate` module: `evaluate.load(metric_path("cider"))` (`from mblip.evaluation.metrics import metric_path`).

Run from the repository root (the module calls `eval.metrics.cider`, the package's plain function).
"""

import datasets
import evaluate

from mblip.evaluation.metrics import cider


_DESCRIPTION = """Corpus CIDEr (pycocoevalcap's Cider, i.e. COCO's CIDEr-D) after the paper's tokenization: word
segmentation for zh, ja and th, NFC normalisation, then the PTB tokenizer. pycocoevalcap's scale (x100 for the
paper's numbers)."""

_KWARGS = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]`): the reference captions of each image.
    lang (`str`): the captions' language code, e.g. "en", "zh".
Returns:
    {"cider": float}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Cider(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Vedantam et al., CIDEr: Consensus-based Image Description Evaluation, CVPR 2015",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, lang="en"):
        return {"cider": cider(list(predictions), [list(r) for r in references], lang)}
