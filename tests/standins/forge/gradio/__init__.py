"""A tiny stand-in for the gradio that Forge ships: components record their arguments, layout blocks are
context managers, and every component created inside a block is listed in that block's children."""

_stack = []


class Component:
    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        self.value = kwargs.get("value", args[0] if args and not isinstance(self, Block) else None)
        self.label = kwargs.get("label")
        self.elem_id = kwargs.get("elem_id")
        self.children = []
        if _stack:
            _stack[-1].children.append(self)

    def change(self, *args, **kwargs):
        return self


class Block(Component):
    def __enter__(self):
        _stack.append(self)
        return self

    def __exit__(self, *exc):
        _stack.pop()
        return False


class Row(Block): pass
class Column(Block): pass
class Group(Block): pass
class Accordion(Block): pass
class Checkbox(Component): pass
class Radio(Component): pass
class Dropdown(Component): pass
class Markdown(Component): pass
class HTML(Component): pass
class Slider(Component): pass
