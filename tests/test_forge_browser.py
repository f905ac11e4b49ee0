"""The Arc Attention accordion in the web UI of Forge (and of Forge classic and reForge, where their checkouts are
given), used as a user uses it, in a headless Chromium: the accordion's own checkbox and backend list in
txt2img, the prompt, size and steps typed in, Generate clicked; what the page sends for the accordion, and the
infotext and picture it shows back.

Needs, and skips visibly without: what tests/test_forge_generation.py needs for each host (checkout, Python,
repositories, SD1.5 checkpoint) and what tests/browser.py needs (playwright, Chromium).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request

import pytest
from browser import page_at, skip_reason, unexpected
from host_process import INSTALL_READY, clean_env, served_as_git
from test_forge_generation import HOSTS, ROOT, data_folder, host, ui_server

BROWSER_SKIP = skip_reason()
ACCORDION = "#script_txt2img_arc_attention_arcattn"
# the forks' gradio 3.41 throws this when the width or height changes, with or without arcattn (seen here)
KNOWN_ERRORS = ("Cannot read properties of undefined (reading 'props')",)


def _usable(name: str, *needs: tuple) -> tuple:
    """(checkout, Python) of the host `name`, or a visible skip: its own needs, the browser's, then each of
    `needs`, a (missing, why) pair."""
    root, py, skip = host(name)
    why = skip or BROWSER_SKIP or next((reason for missing, reason in needs if missing), None)
    if why:
        pytest.skip(why)
    return root, py


def _accordion_checkbox(page):
    """The accordion's own checkbox, once the host's script has put it in the header after the UI loaded."""
    checkbox = page.locator(f"{ACCORDION}-visible-checkbox")
    checkbox.wait_for(state="visible", timeout=60_000)
    return checkbox


@pytest.fixture(params=list(HOSTS))
def forge_ui(request, tmp_path_factory):
    root, py = _usable(request.param)
    data = data_folder(tmp_path_factory, request.param + "-ui")
    url, server = ui_server(py, root, data, clean_env(data / "arcattn-cache"))
    with server:
        yield url, data


def _small_generation(page) -> None:
    """The prompt, a 128 px size, 2 steps and a fixed seed typed into txt2img."""
    page.locator("#txt2img_prompt textarea").fill("a photo of a red fox in the snow")
    for field, value in (("#txt2img_width", "128"), ("#txt2img_height", "128"), ("#txt2img_steps", "2")):
        page.locator(f"{field} input[type=number]").fill(value)
        page.locator(f"{field} input[type=number]").press("Enter")
    page.locator("#txt2img_seed input").fill("1234")
    page.locator("#txt2img_seed input").press("Enter")
    page.wait_for_timeout(500)


def _recorder(page) -> list:
    """A list that fills with (fn_index, inputs) of each event the page sends."""
    sent: list = []

    def record(text):
        # gradio 4 posts an event's inputs to /queue/join, gradio 3 sends them through the /queue/join websocket
        try:
            body = json.loads(text or "{}")
        except (TypeError, ValueError):
            return
        if isinstance(body, dict) and "fn_index" in body and "data" in body:
            sent.append((body["fn_index"], body["data"]))
    page.on("request", lambda r: record(r.post_data) if r.method == "POST" and "/queue/join" in r.url else None)
    page.on("websocket", lambda ws: ws.on("framesent", record))
    return sent


def _inputs_of(url: str) -> tuple:
    """The gradio ids of the accordion's checkbox and backend list, and each event's input ids by fn_index."""
    config = json.load(urllib.request.urlopen(url + "/config", timeout=60))
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    events = {i: d.get("inputs", []) for i, d in enumerate(config["dependencies"])}
    events.update({d["id"]: d.get("inputs", []) for d in config["dependencies"] if "id" in d})  # gradio 4 numbers
    return ids[ACCORDION[1:] + "-checkbox"], ids[ACCORDION[1:] + "_backend"], events


def _generate(page, sent: list, url: str) -> tuple:
    """Click Generate; wait for the infotext; return (infotext, picture, the accordion's two values as the page
    sent them with the generation)."""
    import numpy as np
    from PIL import Image
    sent.clear()
    # the saved picture, not a live preview (off in the test's data folder, but it would come first)
    shown = "() => document.querySelector('#txt2img_gallery img:not(.livePreview img)')?.getAttribute('src') ?? null"
    before = page.evaluate(shown)
    page.click("#txt2img_generate")
    # done when the gallery shows a new file (each generation saves one under a new name) and Generate is back
    page.wait_for_function(f"""(before) => ({shown})() !== before
        && document.querySelector('#txt2img_generate')?.offsetParent !== null""", arg=before, timeout=600_000)
    info = page.locator("#html_info_txt2img").first.inner_text()  # gradio 3 repeats the id inside
    for typed in ("Steps: 2", "Size: 128x128", "Seed: 1234"):  # what _small_generation typed reached the host
        assert typed in info, info
    src = page.evaluate(shown)
    picture = np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(src, timeout=60).read())).convert("RGB"))
    enabled_id, backend_id, events = _inputs_of(url)
    values = [(data[events[fn].index(enabled_id)], data[events[fn].index(backend_id)])
              for fn, data in sent if enabled_id in events.get(fn, ())]
    assert len(values) == 1, f"expected one generation request carrying the accordion, saw {values}"
    return info, picture.astype(np.int16), list(values[0])


def test_accordion_toggled_and_backend_picked_in_the_web_ui(forge_ui):
    url, data = forge_ui
    with page_at(url + "/", data) as (page, errors):
        sent = _recorder(page)
        page.wait_for_selector("#txt2img_generate", timeout=300_000)

        # the accordion: its own checkbox in its header, on; the backend list, on auto; the status lines
        checkbox = _accordion_checkbox(page)
        assert checkbox.is_checked()
        radios = page.locator(f"{ACCORDION}_backend label")
        assert [t.strip() for t in radios.all_inner_texts()] == ["auto", "xmx", "triton", "sdpa"]
        assert page.locator(f"{ACCORDION}_backend input[value=auto]").is_checked()
        assert "sdpa: available" in page.locator(ACCORDION).inner_text()

        _small_generation(page)
        info_on, on, sent_on = _generate(page, sent, url)
        assert sent_on == [True, "auto"] and "Arc Attention: sdpa" in info_on, (sent_on, info_on)

        checkbox.click()  # off: Forge's own attention
        assert not checkbox.is_checked()
        info_off, off, sent_off = _generate(page, sent, url)
        assert sent_off == [False, "auto"] and "Arc Attention: off" in info_off, (sent_off, info_off)

        checkbox.click()
        radios.filter(has_text="sdpa").click()
        info_sdpa, sdpa, sent_sdpa = _generate(page, sent, url)
        assert sent_sdpa == [True, "sdpa"] and "Arc Attention: sdpa" in info_sdpa, (sent_sdpa, info_sdpa)
        assert unexpected(errors, *KNOWN_ERRORS) == [], errors

    assert on.std() > 5  # a real picture (random weights give noise), so the comparison means something
    # Forge's own attention on the CPU is SDPA too: the same pixels
    assert abs(on - off).max() <= 1 and abs(on - sdpa).max() == 0


def _tab(page, within: str, name: str) -> None:
    """Click the tab named `name` among those of `within` (gradio 4 marks tabs with role=tab, gradio 3 does not)."""
    page.locator(f"{within} button").filter(has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).first.click()


def _down(url: str, timeout: float = 120) -> bool:
    """Whether the server at `url` stops answering within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
        except urllib.error.HTTPError:
            pass  # it answers, with an error: not down
        except (OSError, urllib.error.URLError):
            return True
        time.sleep(1)
    return False


@pytest.mark.parametrize("name", list(HOSTS))
def test_install_from_url_in_the_web_ui_then_restart(name, tmp_path_factory):
    """Extensions > Install from URL with this folder's git URL, Installed > "Apply and quit" (the label where no
    launcher script waits to restart the process; webui.sh's loop makes it "Apply and restart UI"), the host
    started again as a user does: the accordion is there and a generation records the backend."""
    root, py = _usable(name, (not shutil.which("git"), "no git executable: the host clones with it"))
    data = data_folder(tmp_path_factory, name + "-install")
    os.unlink(data / "extensions" / "arcattn")  # nothing installed yet
    env = clean_env(data / "arcattn-cache")
    with served_as_git(ROOT, tmp_path_factory.mktemp("served")) as git_url:
        url, server = ui_server(py, root, data, env)
        with server, page_at(url + "/", data) as (page, errors):
            page.wait_for_selector("#txt2img_generate", timeout=300_000)
            assert page.locator(ACCORDION).count() == 0
            _tab(page, "#tabs", "Extensions")
            _tab(page, "#tab_extensions", "Install from URL")
            page.get_by_label("URL for extension's git repository").fill(git_url)
            page.get_by_role("button", name="Install", exact=True).click()
            result = page.locator("#extension_install_result").first
            page.wait_for_function("() => (document.querySelector('#extension_install_result')?.innerText || '')"
                                   ".includes('Installed into')", timeout=600_000)
            assert str(data / "extensions" / "arcattn") in result.inner_text(), result.inner_text()
            _tab(page, "#tab_extensions", "Installed")
            table = page.locator("#extensions_installed_html").first
            page.wait_for_function("() => (document.querySelector('#extensions_installed_html')?.innerText || '')"
                                   ".includes('arcattn')", timeout=60_000)
            assert git_url in table.inner_text()
            page.get_by_role("button", name="Apply and quit").click()
            assert _down(url + "/"), "the host did not quit after Apply and quit"
            assert unexpected(errors, *KNOWN_ERRORS, "Failed to fetch") == [], errors  # fetches after it quit
    log = open(data / "forge.log").read()
    assert INSTALL_READY.search(log), "install.py did not reach its ready line:\n" + log[-3000:]
    assert not os.path.islink(data / "extensions" / "arcattn")  # the host's clone, not this folder

    url, server = ui_server(py, root, data, env)  # the user starts the host again
    with server, page_at(url + "/", data) as (page, errors):
        sent = _recorder(page)
        page.wait_for_selector("#txt2img_generate", timeout=300_000)
        assert _accordion_checkbox(page).is_checked()
        _small_generation(page)
        info, _, values = _generate(page, sent, url)
        assert values == [True, "auto"] and "Arc Attention: sdpa" in info, (values, info)
        assert unexpected(errors, *KNOWN_ERRORS) == [], errors


@pytest.mark.parametrize("name", list(HOSTS))
def test_settings_page_sets_the_accordions_defaults(name, tmp_path_factory):
    """Settings > Arc Attention: off by default and sdpa, Apply settings, Reload UI: the accordion starts off on
    sdpa, and a generation runs with the host's own attention."""
    root, py = _usable(name)
    data = data_folder(tmp_path_factory, name + "-settings")
    url, server = ui_server(py, root, data, clean_env(data / "arcattn-cache"))
    with server, page_at(url + "/", data) as (page, errors):
        sent = _recorder(page)
        page.wait_for_selector("#txt2img_generate", timeout=300_000)
        _tab(page, "#tabs", "Settings")
        _tab(page, "#tab_settings", "Arc Attention")
        enabled = page.locator("#setting_arcattn_enabled input[type=checkbox]").first
        assert enabled.is_checked()
        enabled.click()
        page.locator("#setting_arcattn_backend label").filter(has_text=re.compile(r"^\s*sdpa\s*$")).first.click()
        page.locator("#settings_submit").first.click()
        page.wait_for_function("() => /arcattn_enabled/.test(document.querySelector('#settings_result')?.innerText)",
                               timeout=60_000)
        saved = json.loads((data / "config.json").read_text())
        assert saved.get("arcattn_enabled") is False and saved.get("arcattn_backend") == "sdpa", saved

        page.locator("#settings_restart_gradio").first.click()  # Reload UI: the page reloads itself when ready
        page.wait_for_selector("#txt2img_generate", timeout=300_000)
        assert not _accordion_checkbox(page).is_checked()
        assert page.locator(f"{ACCORDION}_backend input[value=sdpa]").is_checked()
        _small_generation(page)
        info, _, values = _generate(page, sent, url)
        assert values == [False, "sdpa"] and "Arc Attention: off" in info, (values, info)
        # while the UI reloads, the page's requests fail until the host answers again
        assert unexpected(errors, *KNOWN_ERRORS, "Failed to fetch") == [], errors
