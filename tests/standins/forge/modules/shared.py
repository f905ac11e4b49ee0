"""Stand-in for Forge's shared.opts / shared.OptionInfo (modules/options.py): options registered with
add_option(key, OptionInfo(default, label, component, component_args, onchange=..., section=(id, name))),
read as attributes (saved value, else the registered default)."""


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.comment_after = comment_after

    def info(self, info):
        self.comment_after += f"({info})"
        return self

    def needs_reload_ui(self):
        self.comment_after += " (requires Reload UI)"
        return self


class Options:
    def __init__(self):
        super().__setattr__("data", {})
        super().__setattr__("data_labels", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default

    def set(self, key, value):
        if self.data.get(key) == value:
            return False
        self.data[key] = value
        info = self.data_labels.get(key)
        if info is not None and info.onchange is not None:
            info.onchange()
        return True

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)


opts = Options()
