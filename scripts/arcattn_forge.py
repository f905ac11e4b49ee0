"""Forge extension entry (Forge, reForge, Forge classic, Forge Neo): the "Arc Attention" accordion and settings.

Forge loads every .py in an extension's scripts/ folder. This one installs arcattn's attention wrapper once
(arcattn/hosts/forge.py), shows an always-visible accordion (enable toggle + backend choice) in txt2img and
img2img, reads it before every sampling pass, and records in the infotext which backend served the
generation ("Arc Attention: triton", "sdpa", "xmx", "host", "unused" or "off").

It must never break Forge: if anything fails at import, one error is logged and Forge runs as without it.
Set ARCATTN_FORGE=0 (or false/no/off) to load the extension without touching Forge's attention at all.
"""
import logging
import os
import sys

log = logging.getLogger("arcattn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = "Arc Attention"
SECTION = ("arcattn", "Arc Attention")
OPT_ENABLED = "arcattn_enabled"
OPT_BACKEND = "arcattn_backend"
INFOTEXT_KEY = "Arc Attention"


class _UnlessHostLogs(logging.Filter):
    """Drops a line once the root logger has a handler (an extension calling logging.basicConfig after this
    script loaded, say): from then on the line reaches the console through that handler, and only once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not logging.root.handlers


def _user_chose_log_level() -> bool:
    """SD_WEBUI_LOG_LEVEL or --loglevel (Forge's launcher adds COMMANDLINE_ARGS to sys.argv)."""
    return bool(os.environ.get("SD_WEBUI_LOG_LEVEL")) or any(
        a == "--loglevel" or a.startswith("--loglevel=") for a in sys.argv)


def _console_logging() -> None:
    """Forge adds no logging handler unless SD_WEBUI_LOG_LEVEL (or --loglevel) is set, and arcattn's library
    logger ends in a NullHandler (which also silences Python's last-resort output): without a handler of its own
    here, no arcattn line, warnings included, would ever reach a Forge console. Where Forge (or anyone) configured
    logging, the lines go there instead.

    Where it is configured but the user picked no level (another extension's basicConfig; Forge Neo, which
    configures it at every start, at ERROR unless a level is given, and shows its own messages and the extensions'
    print() through loggers of their own at INFO), arcattn's logger is set to INFO, so its lines, warnings
    included, reach that console."""
    if logging.root.handlers:
        if log.level == logging.NOTSET and log.getEffectiveLevel() > logging.INFO and not _user_chose_log_level():
            log.setLevel(logging.INFO)
        return
    if any(not isinstance(h, logging.NullHandler) for h in log.handlers):
        return
    fmt = logging.Formatter("[arcattn] %(levelname)s %(message)s")
    handler = logging.StreamHandler()
    handler.setFormatter(fmt)
    try:  # Forge's own wrapper writes through tqdm while a progress bar is on screen
        from modules.logging_config import TqdmLoggingHandler
        if TqdmLoggingHandler is not None:
            handler = TqdmLoggingHandler(handler)
            handler.setFormatter(fmt)
    except Exception:  # noqa: BLE001 - forks without it: a plain console handler
        pass
    handler.addFilter(_UnlessHostLogs())
    log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


_console_logging()
_loaded = False
if os.environ.get("ARCATTN_FORGE", "1").strip().lower() in ("0", "false", "no", "off"):
    log.info("arcattn: ARCATTN_FORGE=%s, Forge extension not active", os.environ.get("ARCATTN_FORGE"))
else:
    try:
        # Forge already puts each extension's folder on sys.path; a fork that does not gets it here.
        if ROOT not in sys.path:
            sys.path.append(ROOT)
        import gradio as gr
        from modules import script_callbacks, scripts, shared

        import arcattn
        from arcattn.hosts import forge as forge_adapter

        if os.path.dirname(os.path.dirname(os.path.abspath(arcattn.__file__))) != ROOT:
            log.warning("arcattn: using the arcattn package at %s, not the one in this extension (%s)",
                        os.path.dirname(arcattn.__file__), ROOT)
        _loaded = True
    except Exception as e:  # noqa: BLE001 - Forge must start whatever happens here
        log.error("arcattn: Forge extension not loaded, Forge's own attention stays in use (%s: %s)",
                  type(e).__name__, e)


def _defaults() -> tuple:
    """(enabled, backend) from the settings page; the accordion starts from these and calls outside a
    generation (other tabs, API without this script's args) use them."""
    opts = getattr(shared, "opts", None)
    enabled = bool(getattr(opts, OPT_ENABLED, True)) if opts is not None else True
    backend = getattr(opts, OPT_BACKEND, forge_adapter.AUTO) if opts is not None else forge_adapter.AUTO
    if backend not in forge_adapter.BACKEND_CHOICES:
        backend = forge_adapter.AUTO
    return enabled, backend


def _script_args(args) -> tuple:
    """The accordion's values as Forge passes them; missing values (API calls without them) mean the defaults."""
    enabled, backend = _defaults()
    if len(args) > 0 and args[0] is not None:
        enabled = bool(args[0])
    if len(args) > 1 and args[1]:
        backend = str(args[1])
    return enabled, backend


def _apply_defaults() -> None:
    forge_adapter.set_generation(*_defaults())


def _on_ui_settings() -> None:
    shared.opts.add_option(OPT_ENABLED, shared.OptionInfo(
        True, "Arc Attention on by default", gr.Checkbox, section=SECTION, onchange=_apply_defaults,
    ).info("the accordion's initial state, and the setting for work outside txt2img/img2img"))
    shared.opts.add_option(OPT_BACKEND, shared.OptionInfo(
        forge_adapter.AUTO, "Arc Attention backend by default", gr.Radio,
        {"choices": list(forge_adapter.BACKEND_CHOICES)}, section=SECTION, onchange=_apply_defaults,
    ).info("auto = fastest backend that can serve each call; a named backend is tried first, and a call it "
           "cannot serve goes down the usual order (xmx, triton, sdpa)"))


def _status_markdown() -> str:
    try:
        lines = forge_adapter.status_lines()
    except Exception as e:  # noqa: BLE001
        lines = [f"backend status unavailable ({type(e).__name__}: {e})"]
    where = ", ".join(forge_adapter.layouts()) or "not installed (no Forge attention module found)"
    return f"arcattn {arcattn.__version__}, wrapper: {where}  \n" + "  \n".join(lines)


if _loaded:
    try:
        from modules.ui_components import InputAccordion
    except Exception:  # noqa: BLE001 - older forks: a plain accordion with a checkbox inside
        InputAccordion = None

    class ArcAttentionScript(scripts.Script):
        """Always-visible accordion: the toggle is the accordion's own checkbox (open = on)."""

        def __init__(self):
            super().__init__()
            self._counter = None
            self._enabled = True

        def title(self):
            return TITLE

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            enabled_default, backend_default = _defaults()
            if InputAccordion is not None:
                with InputAccordion(enabled_default, label=TITLE, elem_id=self.elem_id("arcattn")) as enabled:
                    backend = gr.Radio(label="Backend", choices=list(forge_adapter.BACKEND_CHOICES),
                                       value=backend_default, elem_id=self.elem_id("arcattn_backend"))
                    gr.Markdown(_status_markdown())
            else:
                with gr.Accordion(TITLE, open=False):
                    enabled = gr.Checkbox(label="Enable", value=enabled_default, elem_id=self.elem_id("arcattn"))
                    backend = gr.Radio(label="Backend", choices=list(forge_adapter.BACKEND_CHOICES),
                                       value=backend_default, elem_id=self.elem_id("arcattn_backend"))
                    gr.Markdown(_status_markdown())
            # the settings page is where these start from: kept out of the host's ui-config.json, which would
            # otherwise pin the first launch's values and override the settings at every later one
            # (an InputAccordion's own accordion is saved apart; the older forks' plain checkbox has none)
            for component in (enabled, getattr(enabled, "accordion", None), backend):
                if component is not None:
                    component.do_not_save_to_config = True
            # the infotext entry is a record, not a parameter: pasting it must not flip anyone's toggle
            return [enabled, backend]

        def process(self, p, *args):
            self._counter = forge_adapter.GenerationCounter()
            self._counter.start()

        def process_before_every_sampling(self, p, *args, **kwargs):
            enabled, backend = _script_args(args)
            self._enabled = enabled
            forge_adapter.set_generation(enabled, backend)
            if self._counter is None:
                self.process(p)
            p.extra_generation_params[INFOTEXT_KEY] = self._counter.label(enabled)

        def postprocess_batch(self, p, *args, **kwargs):
            # called after each batch's sampling and decoding, before that batch's infotexts are written
            if self._counter is not None:
                p.extra_generation_params[INFOTEXT_KEY] = self._counter.label(self._enabled)

        def postprocess(self, p, processed, *args):
            self._counter = None
            _apply_defaults()

    try:
        script_callbacks.on_ui_settings(_on_ui_settings)
        script_callbacks.on_script_unloaded(forge_adapter.uninstall)
        forge_adapter.install(enabled=_defaults()[0], backend=_defaults()[1])
    except Exception as e:  # noqa: BLE001
        log.error("arcattn: could not install the Forge attention wrapper (%s: %s); Forge's own attention "
                  "stays in use", type(e).__name__, e)
        try:
            forge_adapter.uninstall()
        except Exception:  # noqa: BLE001
            pass
