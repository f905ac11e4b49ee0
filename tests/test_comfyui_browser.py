"""ComfyUI's own web UI used as a user uses it, in a headless Chromium:
- the Arc Attention node: the default workflow loaded, the node found through the canvas's search box and added,
  wired between the checkpoint and the KSampler by dragging links, its toggle and backend list clicked, and the
  workflow run with the Run button;
- ComfyUI-Manager's dialog: Manager > "Install via Git URL", this folder's URL typed in, Confirm, then the
  RESTART button the Manager offers; after the restart the node is found by the search box.

Needs, and skips visibly without: what tests/test_comfyui_server.py needs (a ComfyUI checkout, its requirements
with comfyui_frontend_package, an SD1.5 checkpoint), for the install what tests/test_comfyui_manager.py needs
(a ComfyUI-Manager checkout, its requirements, git), and what tests/browser.py needs (playwright, Chromium).
"""
from __future__ import annotations

import json
import os
import re
import time

import pytest
from browser import page_at, skip_reason, unexpected
from host_process import INSTALL_READY, get_json, served_as_git
from test_comfyui_manager import SKIP as MANAGER_SKIP
from test_comfyui_manager import _check_installed, _comfy_with_manager, _server
from test_comfyui_server import ROOT, _image, comfyui_serving, finished
from test_comfyui_server import SKIP as SERVER_SKIP

BROWSER_SKIP = skip_reason()
# ComfyUI's frontend 1.27 throws this while loading, with or without arcattn (seen here)
KNOWN_ERRORS = ("Cannot read properties of undefined (reading 'id')",)

# graph coordinates -> page pixels, through the canvas's pan and zoom
TO_PAGE = """([x, y]) => { const ds = app.canvas.ds, r = app.canvasEl.getBoundingClientRect();
  return [r.left + (x + ds.offset[0]) * ds.scale, r.top + (y + ds.offset[1]) * ds.scale]; }"""


def _slot(page, node: int, is_input: bool, index: int) -> list:
    where = page.evaluate(f"() => app.graph.getNodeById({node}).getConnectionPos({str(is_input).lower()}, {index})")
    return page.evaluate(TO_PAGE, where)


def _drag(page, start, end) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=5)
    page.mouse.move(*end, steps=5)
    page.mouse.up()


def _widget(page, node: int, name: str, from_right: float) -> list:
    """Page pixels of a point on a node's widget row, `from_right` graph units in from the node's right edge."""
    where = page.evaluate(f"""() => {{ const n = app.graph.getNodeById({node});
        const w = n.widgets.find(w => w.name == '{name}');
        return [n.pos[0] + n.size[0] - {from_right}, n.pos[1] + (w.last_y ?? w.y) + 10]; }}""")
    return page.evaluate(TO_PAGE, where)


def _values(page, node: int) -> dict:
    return page.evaluate(f"() => Object.fromEntries(app.graph.getNodeById({node}).widgets.map(w => [w.name, w.value]))")


def _set(page, node_type: str, values: dict) -> None:
    """Widget values of another node, as typing into them would leave them (the test's small, fixed generation)."""
    page.evaluate("""([type, values]) => { const n = app.graph._nodes.find(n => n.type == type);
        for (const w of n.widgets) if (w.name in values) w.value = values[w.name]; }""", [node_type, values])


def _run(page, url: str, base) -> dict:
    """Click Run; wait for the prompt it queued to finish; return its history entry."""
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as queued:
        page.locator("button:has-text('Run')").first.click()
    answer = queued.value.json()
    assert "prompt_id" in answer, answer  # refused: ComfyUI's validation says why
    return finished(url, base, answer["prompt_id"])


def _queued_arc(entry: dict) -> tuple:
    """(the Arc Attention node's inputs, the KSampler's model input, the checkpoint loader's id) as the UI queued
    them."""
    prompt = entry["prompt"][2]
    by_type = {n["class_type"]: (i, n) for i, n in prompt.items()}
    return by_type["ArcAttention"][1]["inputs"], by_type["KSampler"][1]["inputs"]["model"], \
        by_type["CheckpointLoaderSimple"][0]


def _as_returning_user(user_dir) -> None:
    """ComfyUI's user settings as after a first visit: no template gallery opening over the canvas, and no blank
    workflow replacing the one the test loads, both of which a first visit starts a moment after the page."""
    os.makedirs(user_dir / "default", exist_ok=True)
    (user_dir / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))


def _ready(page) -> None:
    page.wait_for_function("() => window.app && app.graph && app.canvasEl", timeout=120_000)


def _load_default_workflow(page) -> None:
    """The default workflow, as Workflow > Load Default gives it."""
    page.evaluate("() => app.loadGraphData()")
    page.wait_for_function("() => app.graph._nodes.some(n => n.type == 'CheckpointLoaderSimple')", timeout=30_000)


def _add_by_search(page) -> int:
    """Add the node as a user does: double-click on empty canvas (below the lowest node), type its name in the
    search box, Enter; the result must show its category. Returns the node's id."""
    below = page.evaluate("""() => { const ns = app.graph._nodes;
        const x = ns.length ? Math.min(...ns.map(n => n.pos[0])) + 300 : 300;
        const y = ns.length ? Math.max(...ns.map(n => n.pos[1] + n.size[1])) + 60 : 200;
        return [x, y]; }""")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    search = page.get_by_placeholder("Search Nodes...")
    # right after a workflow loads, the canvas can miss a double-click (about 1 in 4 here, with or without
    # arcattn's node): a user double-clicks again, and so does the test, twice at most
    for attempt in range(3):
        page.mouse.dblclick(*page.evaluate(TO_PAGE, below))
        try:
            search.wait_for(timeout=5_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    search.fill("Arc Attention")
    option = page.get_by_role("option").filter(has_text="Arc Attention").first
    option.wait_for(timeout=10_000)
    assert "advanced > attention" in option.inner_text()
    page.keyboard.press("Enter")
    search.wait_for(state="hidden", timeout=10_000)  # until then the closing search box takes the mouse
    page.wait_for_function("() => app.graph._nodes.some(n => n.type == 'ArcAttention')", timeout=10_000)
    return page.evaluate("() => app.graph._nodes.find(n => n.type == 'ArcAttention').id")


@pytest.fixture
def comfyui(tmp_path):
    _as_returning_user(tmp_path / "user")
    with comfyui_serving(tmp_path) as url:
        yield url, tmp_path


@pytest.mark.skipif(bool(SERVER_SKIP or BROWSER_SKIP), reason=SERVER_SKIP or BROWSER_SKIP or "")
def test_node_added_wired_toggled_and_run_from_the_web_ui(comfyui):
    url, base = comfyui
    with page_at(url + "/", base) as (page, errors):
        _ready(page)
        _load_default_workflow(page)
        arc = _add_by_search(page)
        assert _values(page, arc) == {"enabled": True, "backend": "auto"}
        assert page.evaluate(f"() => app.graph.getNodeById({arc}).widgets[0].type") == "toggle"

        # wired in by dragging: the checkpoint's MODEL into the node, the node's MODEL into the KSampler
        ckpt = page.evaluate("() => app.graph._nodes.find(n => n.type == 'CheckpointLoaderSimple').id")
        sampler = page.evaluate("() => app.graph._nodes.find(n => n.type == 'KSampler').id")
        _drag(page, _slot(page, ckpt, False, 0), _slot(page, arc, True, 0))
        _drag(page, _slot(page, arc, False, 0), _slot(page, sampler, True, 0))
        _set(page, "EmptyLatentImage", {"width": 128, "height": 128})
        _set(page, "KSampler", {"seed": 1234, "control_after_generate": "fixed", "steps": 2})

        on_entry = _run(page, url, base)
        inputs, model, ckpt_id = _queued_arc(on_entry)
        assert inputs == {"model": [ckpt_id, 0], "enabled": True, "backend": "auto"}, inputs
        assert model == [str(arc), 0], model

        # the toggle clicked off: ComfyUI's own attention
        page.mouse.click(*_widget(page, arc, "enabled", 30))
        assert _values(page, arc)["enabled"] is False
        off_entry = _run(page, url, base)
        assert _queued_arc(off_entry)[0]["enabled"] is False

        # the backend picked from the list the widget opens, the toggle clicked on again
        page.mouse.click(*_widget(page, arc, "backend", 150))
        menu = page.locator(".litecontextmenu .litemenu-entry")
        menu.first.wait_for(timeout=10_000)
        assert menu.all_inner_texts() == ["auto", "xmx", "triton", "sdpa"]
        menu.filter(has_text="sdpa").click()
        page.mouse.click(*_widget(page, arc, "enabled", 30))
        assert _values(page, arc) == {"enabled": True, "backend": "sdpa"}
        sdpa_entry = _run(page, url, base)
        assert _queued_arc(sdpa_entry)[0] == {"model": [ckpt_id, 0], "enabled": True, "backend": "sdpa"}
        assert unexpected(errors, *KNOWN_ERRORS) == [], errors

    save = next(i for i, n in on_entry["prompt"][2].items() if n["class_type"] == "SaveImage")
    on, off, sdpa = (_image(base, e, save) for e in (on_entry, off_entry, sdpa_entry))
    assert on.std() > 5  # a real picture (random weights: noise), so the comparison means something
    # on the CPU arcattn serves every call with SDPA and ComfyUI's own attention is sub-quadratic: equal up to
    # rounding after the VAE
    assert abs(on - off).max() <= 2 and abs(on - sdpa).max() == 0
    text = open(base / "server.log").read()
    assert "ComfyUI attention patched" in text, text[-3000:]


def _restart_outcome(page, log_path, timeout: float = 300) -> str:
    """'restarted' once ComfyUI has started again in its log (the Manager restarts it in place), or 'refused' when
    the Manager says it will not."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "Restarting..." in open(log_path).read():
            return "restarted"
        if page.get_by_text("ComfyUI version is outdated").count():
            return "refused"
        time.sleep(1)
    pytest.fail("ComfyUI did not start again after the Manager's restart:\n" + open(log_path).read()[-3000:])


def _node_found(page, errors: list, log_text: str) -> None:
    """The node can be added from the search box of a ComfyUI that started with the installed folder."""
    _ready(page)
    _add_by_search(page)
    # "Failed to fetch": requests of the page's scripts that this offline machine refuses (the Manager's, seen
    # with V3.37 after its restart), not a fault of the node
    assert unexpected(errors, *KNOWN_ERRORS, "Failed to fetch") == [], errors
    assert "ComfyUI attention patched" in log_text, log_text[-3000:]
    assert not re.search(r"(?i)cannot import.*arcattn|IMPORT FAILED.*arcattn", log_text), log_text[-3000:]


@pytest.mark.skipif(bool(MANAGER_SKIP or BROWSER_SKIP), reason=MANAGER_SKIP or BROWSER_SKIP or "")
def test_manager_dialog_installs_and_restarts(tmp_path):
    comfy = _comfy_with_manager(tmp_path, allow_git_url=True)  # README: what "Install via Git URL" needs
    _as_returning_user(comfy / "user")
    log = tmp_path / "server.log"
    with served_as_git(ROOT, tmp_path / "served") as git_url:
        url, running = _server(comfy, tmp_path, log.name)
        with running, page_at(url + "/", tmp_path) as (page, errors):
            _ready(page)
            page.locator("button:visible", has_text="Manager").first.click()
            page.locator("button:visible", has_text="Install via Git URL").first.click()
            ask = page.locator(".p-dialog", has_text="URL of the Git repository")
            ask.locator("input").fill(git_url)
            ask.locator("button", has_text="Confirm").click()
            page.get_by_text(f"'{git_url}' is installed").wait_for(timeout=600_000)
            installed_log = open(log).read()
            _check_installed(comfy, installed_log)
            assert INSTALL_READY.search(installed_log), installed_log[-3000:]

            # the RESTART button of the Manager's message, and its "are you sure"; a Manager that declared this
            # ComfyUI outdated at start-up (V3.41 on this ComfyUI) refuses, the others restart it in place
            page.get_by_role("button", name="RESTART", exact=True).click()
            page.locator(".p-dialog", has_text="reboot the server").get_by_role("button", name="Confirm").click()
            outcome = _restart_outcome(page, log)
            declared_outdated = "ComfyUI version is outdated" in installed_log
            assert outcome == ("refused" if declared_outdated else "restarted"), outcome
            if outcome == "restarted":  # the user reloads the page once ComfyUI is up again
                deadline = time.time() + 300
                while "To see the GUI go to" not in open(log).read().split("Restarting...")[-1]:
                    assert time.time() < deadline, open(log).read()[-3000:]
                    time.sleep(1)
                assert "ArcAttention" in get_json(url + "/object_info/ArcAttention")
                page.reload()
                _node_found(page, errors, open(log).read().split("Restarting...")[-1])
    if outcome == "refused":  # the Manager's message says to restart ComfyUI: the user does
        print("the Manager refused its restart (ComfyUI outdated for it): ComfyUI restarted by hand")
        url, running = _server(comfy, tmp_path, "after.log")
        with running, page_at(url + "/", tmp_path) as (page, errors):
            _node_found(page, errors, open(tmp_path / "after.log").read())
