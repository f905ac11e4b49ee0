"""Stand-in for the extension-facing part of Forge's modules/scripts.py: the Script base class with the hooks
arcattn uses and AlwaysVisible."""
import re

AlwaysVisible = object()


class Script:
    filename = None
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    sorting_priority = 0

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def process(self, p, *args):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):
        tab = ("img2img_" if self.is_img2img else "txt2img_") if self.show(True) == self.show(False) else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tab}{title}_{item_id}"
