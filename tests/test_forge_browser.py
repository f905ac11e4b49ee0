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
import urllib.request

import pytest
from browser import page_at, skip_reason
from host_process import clean_env
from test_forge_generation import HOSTS, data_folder, host, ui_server

BROWSER_SKIP = skip_reason()
ACCORDION = "#script_txt2img_arc_attention_arcattn"


@pytest.fixture(scope="module", params=list(HOSTS))
def forge_ui(request, tmp_path_factory):
    root, py, skip = host(request.param)
    if skip or BROWSER_SKIP:
        pytest.skip(skip or BROWSER_SKIP)
    data = data_folder(tmp_path_factory, request.param + "-ui")
    url, server = ui_server(py, root, data, clean_env(data / "arcattn-cache"))
    with server:
        yield url, data


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
    shown = "() => document.querySelector('#txt2img_gallery img')?.getAttribute('src') ?? null"
    before = page.evaluate(shown)
    page.click("#txt2img_generate")
    # done when the gallery shows a new file (each generation saves one under a new name) with its infotext
    page.wait_for_function(f"""(before) => ({shown})() !== before
        && (document.querySelector('#html_info_txt2img')?.innerText || '').includes('Seed:')""",
                           arg=before, timeout=600_000)
    info = page.locator("#html_info_txt2img").first.inner_text()  # gradio 3 repeats the id inside
    src = page.locator("#txt2img_gallery img").first.get_attribute("src")
    picture = np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(src, timeout=60).read())).convert("RGB"))
    enabled_id, backend_id, events = _inputs_of(url)
    values = [(data[events[fn].index(enabled_id)], data[events[fn].index(backend_id)])
              for fn, data in sent if enabled_id in events.get(fn, ())]
    assert len(values) == 1, f"expected one generation request carrying the accordion, saw {values}"
    return info, picture.astype(np.int16), list(values[0])


def test_accordion_toggled_and_backend_picked_in_the_web_ui(forge_ui):
    url, data = forge_ui
    with page_at(url + "/", data) as (page, errors):
        sent: list = []

        def record(text):
            # an event's inputs, named by its fn_index: gradio 4 posts them to /queue/join, gradio 3 sends them
            # through the /queue/join websocket
            try:
                body = json.loads(text or "{}")
            except (TypeError, ValueError):
                return
            if isinstance(body, dict) and "fn_index" in body and "data" in body:
                sent.append((body["fn_index"], body["data"]))
        page.on("request", lambda r: record(r.post_data) if r.method == "POST" and "/queue/join" in r.url else None)
        page.on("websocket", lambda ws: ws.on("framesent", record))
        page.wait_for_selector("#txt2img_generate", timeout=300_000)
        page.wait_for_timeout(1000)

        # the accordion: its own checkbox in its header, on; the backend list, on auto; the status lines
        checkbox = page.locator(f"{ACCORDION}-visible-checkbox")
        assert checkbox.is_visible() and checkbox.is_checked()
        radios = page.locator(f"{ACCORDION}_backend label")
        assert [t.strip() for t in radios.all_inner_texts()] == ["auto", "xmx", "triton", "sdpa"]
        assert page.locator(f"{ACCORDION}_backend input[value=auto]").is_checked()
        assert "sdpa: available" in page.locator(ACCORDION).inner_text()

        page.locator("#txt2img_prompt textarea").fill("a photo of a red fox in the snow")
        for field, value in (("#txt2img_width", "128"), ("#txt2img_height", "128"), ("#txt2img_steps", "2")):
            page.locator(f"{field} input[type=number]").fill(value)
            page.locator(f"{field} input[type=number]").press("Enter")
        page.locator("#txt2img_seed input").fill("1234")
        page.locator("#txt2img_seed input").press("Enter")
        page.wait_for_timeout(500)
        # the forks' gradio 3.41 throws "reading 'props'" when the width or height changes, with or without
        # arcattn (seen here): errors are counted from here on, across the accordion's clicks and the generations
        errors.clear()

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
        assert errors == [], errors

    assert on.std() > 5  # a real picture (random weights give noise), so the comparison means something
    # Forge's own attention on the CPU is SDPA too: the same pixels
    assert abs(on - off).max() <= 1 and abs(on - sdpa).max() == 0
