"""The mBLIP toolkit: the model classes and everything every script uses, one module per shared concept.

The three remote-code files (configuration_mblip.py, modeling_mblip.py, processing_mblip.py) live at the repository
root, because every model repository ships them there; this package holds them as symbolic links, so that
``mblip.modeling_mblip`` is their one import name (they import each other with relative imports, as the Hub loader
requires) and a built wheel carries their contents.

Modules: ``hub`` (model repositories), ``cards`` (model cards), ``convert`` (conversion and parts assembly),
``training`` (re-alignment), ``predict`` and ``app`` (inference), ``data`` (the task-mix builder), ``evaluation``
(benchmarks and metrics), ``bench`` (performance comparisons), ``demo`` (the offline demo and tiny models).
"""

# Local Auto-class registration: inside this repository, AutoConfig / AutoModelForImageTextToText / AutoProcessor
# resolve model_type "mblip" to these classes without trust_remote_code. A saved model repository still carries the
# files and `auto_map` for everyone else (see mblip/hub.py).
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from .configuration_mblip import MBlipConfig  # noqa: E402
from .modeling_mblip import MBlipForConditionalGeneration  # noqa: E402
from .processing_mblip import MBlipProcessor  # noqa: E402


AutoConfig.register("mblip", MBlipConfig, exist_ok=True)
AutoModel.register(MBlipConfig, MBlipForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MBlipConfig, MBlipForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MBlipConfig, MBlipProcessor, exist_ok=True)
