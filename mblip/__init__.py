"""Import the repository's root-level remote-code files as a package.

The three model files (configuration_mblip.py, modeling_mblip.py, processing_mblip.py) live at the
repository root because every model repository ships them there, and they import each other with
relative imports, as the Hub loader requires. Adding the root to this package's ``__path__`` makes
``from mblip.modeling_mblip import MBlipForConditionalGeneration`` work for the scripts and the tests
without touching ``sys.path`` inside the model files.
"""

import os

__path__.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
