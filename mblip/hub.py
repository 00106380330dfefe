"""Publishing helpers shared by convert_mblip.py, train_mblip.py and the tests."""

from .configuration_mblip import MBlipConfig
from .modeling_mblip import MBlipForConditionalGeneration
from .processing_mblip import MBlipProcessor


def register_auto_classes():
    """Make `save_pretrained` write `auto_map` and copy the remote-code files, through transformers' own machinery."""
    MBlipConfig.register_for_auto_class()
    MBlipForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    MBlipProcessor.register_for_auto_class()
