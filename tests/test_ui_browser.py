"""The page in a real browser: Debian's chromium, headless, driven by playwright, against `sdcompose ui`.

``SDCOMPOSE_UI_SCREENSHOTS=docs/img`` saves the screenshots of README.md and docs/ui.md from these tests.
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sdcompose
from test_plugins_pose import pose_json
from test_ui_form import crafted_png
from test_ui_server import GATED, gated_env, running_ui, wait_for

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"{CHROMIUM} is missing (apt-get install chromium)")]
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui-outputs")


@pytest.fixture(scope="module")
def url(tmp_path_factory, home, outputs):
    folder = tmp_path_factory.mktemp("ui-browser")
    with running_ui(folder / "server.log", "--outputs", str(outputs), env=gated_env(folder)) as (address, _):
        yield address


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1150})
    page.set_default_timeout(120_000)  # clicks and waits on a loaded 2-core machine: a model switch took over 30 s
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(url)
    ready(page)
    yield page
    page.close()


def ready(page) -> None:
    """Wait for the page-load chain (the form back from storage, the pickers following its model) to end."""
    page.wait_for_selector("body[data-sdc-ready]", state="attached", timeout=180_000)


def set_numbers(page, **values):
    for name, value in values.items():
        box = page.locator(f"#sdc-{name} input[type=number]")
        box.fill(str(value))
        box.press("Enter")


def pick(page, selector, text):
    """Choose the option of the dropdown ``selector`` that matches ``text`` (typed into its filter), and wait until
    the page holds it (the input shows its label, or a multiselect shows its token)."""
    box = page.locator(f"{selector} input")
    box.fill(text)
    # clicked, as a user does: Enter picks the list's active option, which a loaded browser may not have set yet
    page.locator(f"{selector} [role=option][aria-label^={json.dumps(text)}]").first.click(timeout=120_000)
    box.press("Escape")
    box.blur()  # the next click focuses it again, which opens its options
    wait_for(lambda: box.input_value().startswith(text) or any(
        token.startswith(text) for token in page.locator(f"{selector} .token span").all_inner_texts()),
        lambda: f"{selector} to hold {text!r} (it shows {box.input_value()!r})", timeout=120)


def options(page, selector) -> list[str]:
    """The ids a dropdown offers (its labels up to the first space)."""
    box = page.locator(f"{selector} input")
    box.click()
    page.wait_for_selector(f"{selector} [role=option]")
    labels = page.locator(f"{selector} [role=option]").evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
    box.press("Escape")
    box.blur()
    return [label.split(" ")[0].rstrip(":") for label in labels]


def chosen_loras(page) -> list[str]:
    return [label.split(" ")[0] for label in page.locator("#sdc-loras .token span").all_inner_texts()]


def screenshot(page, name: str, full_page: bool = True) -> None:
    if os.environ.get("SDCOMPOSE_UI_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["SDCOMPOSE_UI_SCREENSHOTS"]) / name), full_page=full_page)


def search_box(page):
    return page.locator("#sdc-history-search").locator("textarea, input").first


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def served_png(page, selector="#sdc-gallery img") -> Image.Image:
    page.wait_for_selector(selector, timeout=120_000)
    return Image.open(io.BytesIO(page.request.get(page.get_attribute(selector, "src")).body()))


def test_generate_with_a_controlnet_unit(page, photo):
    page.fill("#sdc-prompt textarea", "a lighthouse on a cliff at dawn")
    set_numbers(page, width=64, height=64, steps=2)
    page.click("#sdc-controlnet button.label-wrap")
    page.click("#sdc-add-unit")
    assert page.locator("#sdc-unit-0-enable input").is_checked()
    page.set_input_files("#sdc-unit-0-image input[type=file]", str(photo))
    page.wait_for_selector("#sdc-unit-0-image img")
    page.click("#sdc-unit-0-preview")
    edges = np.asarray(served_png(page, "#sdc-unit-0-map img").convert("L"))
    assert edges.shape == (64, 64) and edges.max() > 200 and edges.mean() < 60, "white edges on black, at 64x64"
    page.click("#sdc-generate")
    page.get_by_text("1 image(s), seed").wait_for(timeout=120_000)  # past the step previews: the saved PNG
    image = served_png(page)
    meta = json.loads(image.text["sdcompose"])  # the gallery serves the saved PNG, metadata and all
    assert image.size == (64, 64) and meta["request"]["prompt"] == "a lighthouse on a cliff at dawn"
    assert [c["id"] for c in meta["request"]["controls"]] == ["canny"] and meta["request"]["steps"] == 2
    assert "noise from a random-weight test model" in page.inner_text("#sdc-status")
    screenshot(page, "ui.png")
    assert page.dialogs == []


def test_stop_interrupts_a_long_run_and_errors_leave_the_session_working(page):
    page.fill("#sdc-prompt textarea", GATED)
    set_numbers(page, width=512, height=512, steps=150)
    page.click("#sdc-generate")
    page.get_by_text("of 150").first.wait_for(timeout=120_000)  # counting steps; the run is held at step 2 until Stop
    page.keyboard.press("Escape")  # the page's key for Stop
    page.get_by_text("Stopping at the end of this step").wait_for(timeout=120_000)
    page.get_by_text("Stopped: cancelled at step").wait_for(timeout=120_000)  # at the next step
    page.fill("#sdc-prompt textarea", "a fox")
    set_numbers(page, width=64, height=64, steps=2)
    page.click("#sdc-controlnet button.label-wrap")
    page.click("#sdc-add-unit")  # enabled, but no image: the page must say so
    page.click("#sdc-generate")
    # The error stays in the status line (no toast to miss, no bare "Error" over the gallery).
    page.locator("#sdc-status .sdc-error").get_by_text("ControlNet unit 1 has no image").wait_for(timeout=120_000)
    page.locator("#sdc-unit-0-enable input").uncheck()
    page.click("#sdc-generate")
    page.get_by_text("1 image(s), seed").first.wait_for(timeout=120_000)  # the stopped run holds nothing
    assert served_png(page).size == (64, 64)


def test_a_queued_run_shows_its_place_stop_withdraws_it_and_previews_answer_meanwhile(browser, url, outputs, photo):
    """Two tabs: A's run holds the device; B's unit preview answers all the same (previews do not wait in the
    generation queue); B's run waits with its place shown and its Stop withdraws it: it never runs."""
    first, second = (browser.new_page(viewport={"width": 1400, "height": 1150}) for _ in range(2))
    try:
        for page in (first, second):
            page.set_default_timeout(120_000)
            page.goto(url)
            ready(page)
        first.fill("#sdc-prompt textarea", GATED)
        set_numbers(first, width=64, height=64, steps=20)
        first.click("#sdc-generate")
        first.get_by_text("Step 2 of 20").first.wait_for(timeout=120_000)  # held at step 2 until its Stop
        # the progress bar, its step count and time left stay in view while the step previews arrive
        first.locator("#sdc-gallery img").first.wait_for(timeout=120_000)
        first.locator("#sdc-progress .sdc-bar-text").get_by_text("left").wait_for(timeout=120_000)
        assert first.locator("#sdc-progress .sdc-bar").is_visible() and first.locator("#sdc-gallery img").first.is_visible()
        assert "preview at step" in first.inner_text("#sdc-gallery")

        set_numbers(second, width=64, height=64)
        second.click("#sdc-controlnet button.label-wrap")
        second.click("#sdc-add-unit")
        second.set_input_files("#sdc-unit-0-image input[type=file]", str(photo))
        second.wait_for_selector("#sdc-unit-0-image img")
        second.click("#sdc-unit-0-preview")
        edges = np.asarray(served_png(second, "#sdc-unit-0-map img").convert("L"))
        assert edges.shape == (64, 64) and edges.max() > 200, "the preview answers while A's run holds the queue"
        assert "Step 2 of 20" in first.inner_text("#sdc-progress"), "A's run is still held"
        second.locator("#sdc-unit-0-enable input").uncheck()

        second.fill("#sdc-prompt textarea", "waits its turn")
        set_numbers(second, steps=2)
        second.fill("#sdc-seed input", "424242")
        second.click("#sdc-generate")
        second.locator("#sdc-status").get_by_text("Queued: 1 request ahead of this one.").wait_for(timeout=120_000)
        screenshot(second, "ui-queue.png", full_page=False)
        second.click("#sdc-stop")
        second.locator("#sdc-status").get_by_text("Stopped: cancelled before it started.").wait_for(timeout=120_000)
        assert "of 20" in first.inner_text("#sdc-progress"), "the first run goes on"
        first.click("#sdc-stop")
        first.get_by_text("Stopped: cancelled at step").wait_for(timeout=120_000)
        second.fill("#sdc-seed input", "424243")
        second.click("#sdc-generate")  # the queue serves the page on, in order: the withdrawn run came before
        second.get_by_text("1 image(s), seed 424243").first.wait_for(timeout=120_000)
        assert served_png(second).size == (64, 64) and list(outputs.glob("*/*-424243.png"))
        assert not list(outputs.glob("*/*-424242.png")), "the withdrawn run never ran"
    finally:
        first.close()
        second.close()


def test_send_to_buttons_and_reuse_seed_take_the_selected_image_of_a_batch(page, outputs):
    page.fill("#sdc-prompt textarea", "a batch of two lighthouses")
    set_numbers(page, width=64, height=64, steps=2, batch=2)
    page.fill("#sdc-seed input", "70")
    page.click("#sdc-generate")
    page.get_by_text("2 image(s), seed 70, 71").wait_for(timeout=120_000)
    (kept,) = outputs.glob("*/*-71.png")
    page.locator("#sdc-gallery img").nth(1).click()  # the batch's second image
    page.locator("#sdc-selected").get_by_text(f"Selected: {kept.name}").wait_for(timeout=120_000)
    page.fill("#sdc-seed input", "5")
    page.click("#sdc-reuse-seed")
    page.wait_for_function("document.querySelector('#sdc-seed input').value === '71'", timeout=120_000)

    page.click("#sdc-send-img2img")
    page.locator("#sdc-input-settings").wait_for(state="visible", timeout=120_000)  # the Image to image tab
    assert np.array_equal(pixels(served_png(page, "#sdc-init-image img")), pixels(Image.open(kept)))
    page.click("#sdc-controlnet button.label-wrap")
    page.click("#sdc-send-unit")
    assert page.locator("#sdc-unit-0-enable input").is_checked()
    assert np.array_equal(pixels(served_png(page, "#sdc-unit-0-image img")), pixels(Image.open(kept)))
    page.locator("#sdc-unit-0-enable input").uncheck()
    page.click("#sdc-send-inpaint")
    page.locator("#sdc-tab-inpaint").wait_for(state="visible", timeout=120_000)
    page.click("#sdc-generate")  # the editor holds the image (its error asks for the mask, not the image)
    page.locator("#sdc-status .sdc-error").get_by_text("inpaint needs a mask").wait_for(timeout=120_000)
    page.click("#sdc-send-info")
    page.wait_for_function("document.querySelector('#sdc-info-parameters textarea')?.value.includes('Seed: 71')",
                           timeout=120_000)
    assert page.dialogs == []


def test_image_info_shows_metadata_as_text_and_restores_it(page, tmp_path):
    png = crafted_png(tmp_path / "crafted.png", prompt=XSS, negative_prompt="</textarea><b>bold</b>", model="tiny-sd15",
                      width=64, height=72, steps=3, guidance=4.0, seed=9, scheduler="euler")
    page.get_by_role("tab", name="Image info").click()
    page.set_input_files("#sdc-info-image input[type=file]", str(png))
    page.wait_for_function("document.querySelector('#sdc-info-parameters textarea').value.includes('__xss')")
    assert page.input_value("#sdc-info-parameters textarea").startswith(XSS)
    assert XSS in page.inner_text("#sdc-info-metadata").replace('\\"', '"')
    page.click("#sdc-restore")
    page.wait_for_function(f"document.querySelector('#sdc-prompt textarea').value === {json.dumps(XSS)}")
    assert page.input_value("#sdc-seed input") == "9"
    assert page.input_value("#sdc-height input[type=number]") == "72"
    assert page.evaluate("window.__xss") is None and page.dialogs == []


def test_image_info_reads_and_restores_an_a1111_png(page, tmp_path):
    """An AUTOMATIC1111 PNG: its raw parameters shown, what cannot be used listed, its settings restored."""
    from test_infotext import A1111_TEXT, png_with
    png = png_with(tmp_path / "a1111.png", parameters=A1111_TEXT)
    page.get_by_role("tab", name="Image info").click()
    page.set_input_files("#sdc-info-image input[type=file]", str(png))
    page.wait_for_function("document.querySelector('#sdc-info-parameters textarea').value.includes('Hires upscaler')")
    assert A1111_TEXT in page.input_value("#sdc-info-parameters textarea")
    shown = page.inner_text("#sdc-info-metadata")
    for dropped in ("AUTOMATIC1111", "Hires upscaler: Latent", "ControlNet 0", "TI hashes: easynegative"):
        assert dropped in shown, dropped
    page.click("#sdc-restore")
    prompt = A1111_TEXT.split("\n")[0]
    page.wait_for_function(f"document.querySelector('#sdc-prompt textarea').value === {json.dumps(prompt)}")
    assert page.input_value("#sdc-seed input") == "1234"
    assert page.input_value("#sdc-steps input[type=number]") == "3"
    page.click("#sdc-hires button.label-wrap")  # A1111's hires fix, restored
    assert page.locator("#sdc-hires-enable input").is_checked()
    assert page.input_value("#sdc-hires-scale input[type=number]") == "2"
    assert page.dialogs == []


def test_lora_and_controlnet_choices_follow_the_model(page):
    page.click("#sdc-lora button.label-wrap")
    page.click("#sdc-controlnet button.label-wrap")
    page.click("#sdc-add-unit")
    wait_for(lambda: "tiny-lora-sdxl" not in options(page, "#sdc-loras"), "the page load to narrow the LoRAs")
    assert "tiny-lora-sd15" in options(page, "#sdc-loras")
    offered = options(page, "#sdc-unit-0-model")
    assert offered[0] == "auto" and "tiny-controlnet-canny-sd15" in offered
    assert not any(model.endswith("sdxl") for model in offered)
    pick(page, "#sdc-loras", "tiny-lora-sd15")
    pick(page, "#sdc-unit-0-model", "tiny-controlnet-canny-sd15")
    assert chosen_loras(page) == ["tiny-lora-sd15"]
    pick(page, "#sdc-model", "tiny-sdxl")
    notes = ("LoRA tiny-lora-sd15 is for sd15; cleared. ControlNet unit 1: model tiny-controlnet-canny-sd15 is for "
             "sd15; set to auto.")
    wait_for(lambda: notes in page.inner_text("#sdc-status"), lambda: f"the notes; the status line shows "
             f"{page.inner_text('#sdc-status')!r}, unit 1's model {page.input_value('#sdc-unit-0-model input')!r}",
             timeout=120)
    assert chosen_loras(page) == [] and page.input_value("#sdc-unit-0-model input").startswith("auto ")
    offered = options(page, "#sdc-loras")
    assert "tiny-lora-sdxl" in offered and "tiny-lora-sd15" not in offered
    offered = options(page, "#sdc-unit-0-model")
    assert "tiny-controlnet-canny-sdxl" in offered and not any(model.endswith("sd15") for model in offered)
    assert page.dialogs == []


def test_restoring_an_image_of_the_other_family_switches_the_model_and_keeps_its_choices(page, tmp_path):
    control = sdcompose.Control("canny", Image.new("RGB", (64, 64)), model="tiny-controlnet-canny-sdxl",
                                preprocessed=True)
    png = crafted_png(tmp_path / "sdxl.png", prompt="a tower", model="tiny-sdxl", width=64, height=64, steps=2,
                      seed=9, loras=[sdcompose.Lora("tiny-lora-sdxl", 0.6)], controls=[control])
    page.get_by_role("tab", name="Image info").click()
    page.set_input_files("#sdc-info-image input[type=file]", str(png))
    page.wait_for_function("document.querySelector('#sdc-info-parameters textarea').value.includes('a tower')")
    page.click("#sdc-restore")
    page.wait_for_function("document.querySelector('#sdc-model input').value.startsWith('tiny-sdxl ')")
    page.click("#sdc-lora button.label-wrap")
    page.click("#sdc-controlnet button.label-wrap")
    wait_for(lambda: "tiny-lora-sd15" not in options(page, "#sdc-loras"), "the LoRAs to follow the restored model")
    assert chosen_loras(page) == ["tiny-lora-sdxl"]
    assert page.input_value("#sdc-unit-0-model input").startswith("tiny-controlnet-canny-sdxl ")
    assert "cleared" not in page.inner_text("#sdc-status")
    page.click("#sdc-generate")  # the restored selections are among the choices the server now holds
    page.get_by_text("1 image(s), seed 9").wait_for(timeout=120_000)
    request = json.loads(served_png(page).text["sdcompose"])["request"]
    assert (request["model"], request["loras"]) == ("tiny-sdxl", [{"id": "tiny-lora-sdxl", "weight": 0.6}])
    assert request["controls"][0]["model"] == "tiny-controlnet-canny-sdxl" and page.dialogs == []


def test_a_generated_image_is_kept_in_history_and_on_disk_across_a_reload_and_a_restart(page, browser, outputs,
                                                                                         pipe, tmp_path):
    page.fill("#sdc-prompt textarea", "a kept lighthouse")
    set_numbers(page, width=64, height=64, steps=2)
    page.fill("#sdc-seed input", "321")
    page.locator("#sdc-prompt textarea").press("Control+Enter")  # the page's key for Generate
    page.get_by_text("1 image(s), seed 321").wait_for(timeout=120_000)
    (kept,) = outputs.glob("*/*-321.png")
    assert kept.parent.name == time.strftime("%Y-%m-%d") and kept.name.endswith("-321.png")
    assert kept.name in page.inner_text("#sdc-status")

    page.reload()
    page.wait_for_selector("#sdc-prompt textarea", timeout=120_000)
    # The form comes back from the browser's storage.
    page.wait_for_function("document.querySelector('#sdc-prompt textarea').value === 'a kept lighthouse'",
                           timeout=120_000)
    assert page.input_value("#sdc-seed input") == "321"
    assert page.input_value("#sdc-width input[type=number]") == "64"
    page.get_by_role("tab", name="History").click()
    search_box(page).fill("KEPT lighthouse")
    search_box(page).press("Enter")
    page.get_by_text("1 image(s) whose prompt contains").wait_for(timeout=120_000)
    shown = served_png(page, "#sdc-history img")
    assert np.array_equal(pixels(shown), pixels(Image.open(kept))), "History serves the kept PNG itself"
    assert json.loads(shown.text["sdcompose"])["seed"] == 321
    screenshot(page, "ui-history.png", full_page=False)
    remade = pipe.reproduce(kept)  # the PNG carries all it takes to make it again, pixel for pixel
    assert np.array_equal(pixels(remade.images[0]), pixels(Image.open(kept)))

    page.locator("#sdc-history img").first.click()  # select it, then send it on
    page.click("#sdc-history-send-info")
    page.wait_for_function("document.querySelector('#sdc-info-parameters textarea')?.value.includes('kept lighthouse')",
                           timeout=120_000)
    search_box_text = "no such prompt anywhere"
    page.get_by_role("tab", name="History").click()
    search_box(page).fill(search_box_text)
    search_box(page).press("Enter")
    page.get_by_text("0 image(s) whose prompt contains").wait_for(timeout=120_000)
    assert page.dialogs == []

    # Another server on the same folder (as after a restart) lists the same image.
    with running_ui(tmp_path / "second.log", "--outputs", str(outputs)) as (second, _):
        other = browser.new_page(viewport={"width": 1400, "height": 1150})
        other.goto(second)
        other.wait_for_selector("#sdc-prompt textarea", timeout=120_000)
        other.get_by_role("tab", name="History").click()
        other.get_by_text(kept.name).first.wait_for(timeout=120_000)  # its caption
        assert np.array_equal(pixels(served_png(other, "#sdc-history img")), pixels(Image.open(kept)))
        other.close()


def test_a_non_image_control_file_gives_one_sentence_and_the_page_keeps_working(page, tmp_path):
    bad = tmp_path / "notanimage.png"
    bad.write_text("this is a text file, not a PNG")
    set_numbers(page, width=64, height=64, steps=2)
    page.click("#sdc-controlnet button.label-wrap")
    page.click("#sdc-add-unit")
    page.set_input_files("#sdc-unit-0-image input[type=file]", str(bad))
    page.click("#sdc-generate")
    error = page.locator("#sdc-status .sdc-error")
    error.wait_for(timeout=120_000)
    text = error.inner_text()
    assert text.startswith("Invalid request: ControlNet unit 1: the control image: this file is not an image"), text
    assert len(text) < 200 and "/" not in text and "notanimage" not in text and "Traceback" not in text
    assert "Error" not in page.inner_text("#sdc-gallery")
    screenshot(page, "ui-error.png", full_page=False)
    page.click("#sdc-unit-0-remove")
    page.click("#sdc-generate")
    page.get_by_text("1 image(s), seed").wait_for(timeout=120_000)
    assert page.locator("#sdc-status .sdc-error").count() == 0, "a new run clears the last error"
    assert page.dialogs == []


def test_an_openpose_json_file_drives_a_generation(page, tmp_path):
    pose = tmp_path / "pose.json"
    pose.write_text(json.dumps(pose_json()))
    set_numbers(page, width=64, height=64, steps=2)
    page.click("#sdc-controlnet button.label-wrap")
    page.click("#sdc-add-unit")
    pick(page, "#sdc-unit-0-plugin", "pose")
    page.set_input_files("#sdc-unit-0-file input[type=file]", str(pose))
    drawn = pixels(served_png(page, "#sdc-unit-0-map img"))  # the pose it draws, shown as the file arrives
    assert drawn.shape == (64, 64, 3) and drawn.max() > 150 and len(np.unique(drawn.reshape(-1, 3), axis=0)) > 3
    page.locator("#sdc-unit-0-map").scroll_into_view_if_needed()
    screenshot(page, "ui-pose.png", full_page=False)
    page.click("#sdc-generate")
    page.get_by_text("1 image(s), seed").wait_for(timeout=120_000)
    meta = json.loads(served_png(page).text["sdcompose"])
    assert [c["id"] for c in meta["request"]["controls"]] == ["pose"]
    assert "tiny-controlnet-openpose-sd15" in meta["models"] and page.dialogs == []


def test_conditioners_follow_the_models_family(page):
    page.click("#sdc-controlnet button.label-wrap")
    page.click("#sdc-add-unit")
    wait_for(lambda: "lineart" in options(page, "#sdc-unit-0-plugin"), "the sd15 conditioners")
    pick(page, "#sdc-model", "tiny-sdxl")
    wait_for(lambda: "lineart" not in options(page, "#sdc-unit-0-plugin"), "lineart (sd15 only) to leave")
    assert {"canny", "depth", "pose"} <= set(options(page, "#sdc-unit-0-plugin"))


def test_generate_and_stop_stay_in_reach_on_a_narrow_screen(browser, url):
    page = browser.new_page(viewport={"width": 400, "height": 800})
    page.goto(url)
    page.wait_for_selector("#sdc-prompt textarea", timeout=120_000)
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    for button in ("#sdc-generate", "#sdc-stop"):
        box = page.locator(button).bounding_box()
        assert box and 0 <= box["y"] and box["y"] + box["height"] <= 800, (button, box)
    screenshot(page, "ui-narrow.png", full_page=False)
    page.close()


def test_img2img_resize_modes_and_the_input_images_size(page, photo):
    assert not page.locator("#sdc-input-settings").is_visible(), "strength and resizing apply to an input image only"
    page.get_by_role("tab", name="Image to image").click()
    page.locator("#sdc-input-settings").wait_for(state="visible", timeout=120_000)
    assert page.locator("#sdc-strength").is_visible()
    page.set_input_files("#sdc-init-image input[type=file]", str(photo))  # 96x80
    page.wait_for_selector("#sdc-init-image img", timeout=120_000)
    page.click("#sdc-input-size")
    page.get_by_text("Width and height set to the input image's size: 96x80.").wait_for(timeout=120_000)
    assert page.input_value("#sdc-width input[type=number]") == "96"
    assert page.input_value("#sdc-height input[type=number]") == "80"
    set_numbers(page, width=64, height=64, steps=2)
    page.locator("#sdc-resize-mode").get_by_label("Crop and resize").check()
    page.fill("#sdc-seed input", "5")
    page.click("#sdc-generate")
    page.get_by_text("1 image(s), seed 5").wait_for(timeout=120_000)
    meta = json.loads(served_png(page).text["sdcompose"])
    assert meta["task"] == "img2img" and meta["request"]["resize_mode"] == "crop_and_resize"
    screenshot(page, "ui-img2img.png", full_page=False)
    page.get_by_role("tab", name="Text to image").click()
    page.locator("#sdc-input-settings").wait_for(state="hidden", timeout=120_000)
    assert page.dialogs == []


def test_typed_values_out_of_range_are_refused_and_the_helpers_answer(page):
    set_numbers(page, steps=2, height=64)
    set_numbers(page, width=99999)
    page.click("#sdc-generate")
    error = page.locator("#sdc-status .sdc-error")
    error.get_by_text("Invalid request: width must be between 64 and 4096, got 99999").wait_for(timeout=120_000)
    assert page.input_value("#sdc-width input[type=number]") == "99999", "kept as typed, not clamped to 4096"
    set_numbers(page, width=64)
    page.fill("#sdc-seed input", "-5")
    page.click("#sdc-generate")
    error.get_by_text("seed must be -1 (random) or between 0 and 9223372036854775807, got -5").wait_for(timeout=120_000)
    assert "None" not in error.inner_text() and "e+18" not in error.inner_text()
    page.fill("#sdc-prompt textarea", "a lighthouse on a cliff")
    page.wait_for_function("/^\\d+\\/75$/.test(document.querySelector('#sdc-prompt-tokens').innerText.trim())",
                           timeout=120_000)  # A1111's counter: tokens used of the chunks they fill
    page.click("#sdc-refresh")
    page.get_by_text("Model folders scanned").wait_for(timeout=120_000)


def test_restoring_add_trigger_words_shows_the_prompt_the_model_gets(page, tmp_path):
    png = crafted_png(tmp_path / "words.png", prompt="a lighthouse", model="tiny-sd15", width=64, height=64,
                      steps=2, seed=4, add_trigger_words=True, loras=[sdcompose.Lora("tiny-lora-sd15", 0.8)])
    page.get_by_role("tab", name="Image info").click()
    page.set_input_files("#sdc-info-image input[type=file]", str(png))
    page.wait_for_function("document.querySelector('#sdc-info-parameters textarea').value.includes('a lighthouse')")
    page.click("#sdc-restore")
    page.locator("#sdc-prompt-tokens").get_by_text("the model gets: a lighthouse, tinystyle").wait_for(timeout=120_000)
    assert page.input_value("#sdc-prompt textarea") == "a lighthouse" and page.dialogs == []


def test_an_xyz_plot_runs_as_one_job_and_shows_its_labelled_grid(page, outputs):
    page.fill("#sdc-prompt textarea", "a plotted lighthouse")
    set_numbers(page, width=64, height=64, steps=2)
    page.fill("#sdc-seed input", "8")
    page.click("#sdc-xyz button.label-wrap")
    pick(page, "#sdc-xyz-x-kind", "Steps")
    page.locator("#sdc-xyz-x-values").locator("textarea, input").first.fill("1, 2")
    pick(page, "#sdc-xyz-y-kind", "CFG scale")
    page.locator("#sdc-xyz-y-values").locator("textarea, input").first.fill("2, 6")
    page.click("#sdc-xyz-run")
    page.get_by_text("X/Y/Z plot: 4 image(s) and 1 grid(s)").wait_for(timeout=240_000)
    grid = served_png(page)  # the first image shown: the grid
    meta = json.loads(grid.text["sdcompose"])
    assert [a["kind"] for a in meta["xyz"]["axes"]] == ["steps", "guidance"] and grid.width > 128
    (kept,) = outputs.glob("*/grids/*-grid.png")
    assert np.array_equal(pixels(Image.open(kept)), pixels(grid))
    assert len(list(outputs.glob("*/*-8.png"))) == 4, "each cell kept as its own PNG"
    screenshot(page, "ui-xyz.png", full_page=False)
    assert page.dialogs == []


def test_generate_with_an_ip_adapter(page, photo):
    page.fill("#sdc-prompt textarea", "a fox in the snow")
    set_numbers(page, width=64, height=64, steps=2)
    page.click("#sdc-ip-adapter button.label-wrap")
    page.check("#sdc-ip-enable input")
    pick(page, "#sdc-ip-model", "tiny-ip-adapter-sd15")
    page.set_input_files("#sdc-ip-image input[type=file]", str(photo))
    page.wait_for_selector("#sdc-ip-image img")
    set_numbers(page, **{"ip-weight": 0.7})
    page.click("#sdc-generate")
    page.get_by_text("1 image(s), seed").wait_for(timeout=120_000)
    meta = json.loads(served_png(page).text["sdcompose"])
    [adapter] = meta["request"]["ip_adapters"]
    assert adapter["id"] == "tiny-ip-adapter-sd15" and adapter["weight"] == 0.7
    assert "tiny-image-encoder" in meta["models"]
    assert page.dialogs == []
