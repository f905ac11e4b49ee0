# Modules this stand-in does not change (model_patcher, patcher_extension) come from the 0.3.64 stand-in.
import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "comfy"))
