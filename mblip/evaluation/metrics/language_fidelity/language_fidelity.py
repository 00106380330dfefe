"""Language fidelity, as an `evaluate` module: `evaluate.load(metric_path("language_fidelity"))` (`from mblip.evaluation.metrics import metric_path`).
Run from the repository root.
"""

import datasets
import evaluate

from mblip.evaluation.metrics import language_fidelity


_DESCRIPTION = """The share of outputs that language identification (py3langid, whose model ships with the package)
assigns to the requested language; empty outputs count as wrong."""

_KWARGS = """
Args:
    predictions (`list[str]`): generated texts.
    lang (`str`): the requested language code, e.g. "de".
Returns:
    {"language_fidelity": float}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class LanguageFidelity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, lang="en"):
        return {"language_fidelity": language_fidelity(list(predictions), lang)}
