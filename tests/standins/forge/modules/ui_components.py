"""Stand-in for Forge's InputAccordion: an accordion whose open state is the input value (a checkbox)."""
import gradio as gr


class InputAccordionImpl(gr.Checkbox):
    def __init__(self, value=None, **kwargs):
        super().__init__(value=value, **kwargs)
        self.accordion = gr.Accordion(label=kwargs.get("label", "Accordion"), open=value)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc):
        return self.accordion.__exit__(*exc)


def InputAccordion(value=None, **kwargs):
    return InputAccordionImpl(value=value, **kwargs)
