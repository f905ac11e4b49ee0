"""Stand-in for comfy.model_patcher.ModelPatcher: clone() deep-copies model_options."""
import copy


class ModelPatcher:
    def __init__(self, model):
        self.model = model
        self.model_options = {"transformer_options": {}}

    def clone(self):
        n = ModelPatcher(self.model)
        n.model_options = copy.deepcopy(self.model_options)
        return n
