"""Stand-in for Forge's modules/script_callbacks.py: registration functions with Forge's signatures, and the
runners the webui calls (ui_settings_callback before the settings page is built, script_unloaded_callback
before a UI reload)."""
callbacks_ui_settings = []
callbacks_script_unloaded = []


def on_ui_settings(callback, *, name=None):
    callbacks_ui_settings.append(callback)


def on_script_unloaded(callback, *, name=None):
    callbacks_script_unloaded.append(callback)


def ui_settings_callback():
    for c in callbacks_ui_settings:
        c()


def script_unloaded_callback():
    for c in reversed(callbacks_script_unloaded):
        c()


def clear_callbacks():
    callbacks_ui_settings.clear()
    callbacks_script_unloaded.clear()
