"""Import the repository's root-level remote-code files as a package.

The three model files (configuration_mblip.py, modeling_mblip.py, processing_mblip.py) live at the
repository root because every model repository ships them there, and they import each other with
relative imports, as the Hub loader requires. Adding the root to this package's ``__path__`` makes
``from mblip.modeling_mblip import MBlipForConditionalGeneration`` work for the scripts and the tests
without touching ``sys.path`` inside the model files.
"""

import os

__path__.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
