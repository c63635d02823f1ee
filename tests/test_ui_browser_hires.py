"""The hires fix section and the Upscale tab in a real browser (Debian's chromium through playwright), against
`sdcompose ui` on the tiny models; the fixtures and helpers are test_ui_browser's."""
from __future__ import annotations

import json

from test_ui_browser import (CHROMIUM, browser, outputs, page, pixels, pytestmark, served_png,  # noqa: F401
                             set_numbers, url)


def test_a_hires_run_from_the_page_lists_both_passes_and_restores_the_section(page, pipe, tmp_path):
    import sdcompose
    page.fill("#sdc-prompt textarea", "a castle on a hill")
    set_numbers(page, width=64, height=64, steps=2, seed=11)
    page.click("#sdc-hires button.label-wrap")
    page.check("#sdc-hires-enable input")
    set_numbers(page, **{"hires-scale": 2, "hires-steps": 2})
    page.click("#sdc-generate")
    page.get_by_text("1 image(s), seed 11").wait_for(timeout=120_000)
    image = served_png(page)
    meta = json.loads(image.text["sdcompose"])
    assert image.size == (128, 128)
    assert [(p["pass"], p["width"], p["steps"]) for p in meta["passes"]] == [(1, 64, 2), (2, 128, 2)]
    assert meta["request"]["hires"] == {"scale": 2.0, "upscaler": "lanczos", "steps": 2, "denoise": 0.5}
    direct = pipe.generate(prompt="a castle on a hill", model=meta["request"]["model"], width=64, height=64, steps=2,
                           seed=11, hires=sdcompose.Hires(2, "lanczos", 2, 0.5))
    assert (pixels(image) == pixels(direct.images[0])).all()
    # the section changed, then restored from the PNG by Image info's Send to Generate
    png = tmp_path / "hires.png"
    png.write_bytes(page.request.get(page.get_attribute("#sdc-gallery img", "src")).body())
    page.uncheck("#sdc-hires-enable input")
    set_numbers(page, **{"hires-steps": 7})
    page.get_by_role("tab", name="Image info").click()
    page.set_input_files("#sdc-info-image input[type=file]", str(png))
    page.wait_for_function("document.querySelector('#sdc-info-parameters textarea').value.includes('castle')")
    page.click("#sdc-restore")
    page.wait_for_function("document.querySelector('#sdc-hires-steps input[type=number]').value === '2'")
    assert page.locator("#sdc-hires-enable input").is_checked()
    assert page.input_value("#sdc-hires-scale input[type=number]") == "2"
    assert page.dialogs == []


def test_the_upscale_tab_runs_an_upscaler_and_saves_its_png(page, photo, outputs):  # noqa: F811
    page.get_by_role("tab", name="Upscale").click()
    page.set_input_files("#sdc-upscale-image input[type=file]", str(photo))
    page.wait_for_selector("#sdc-upscale-image img")
    set_numbers(page, **{"upscale-scale": 2})
    page.click("#sdc-upscale-run")
    page.get_by_text("192x160 with tiny-upscaler-x2").wait_for(timeout=120_000)
    image = served_png(page, "#sdc-upscale-result img")
    assert image.size == (192, 160)
    assert "tiny-upscaler-x2" in json.loads(image.text["sdcompose"])["models"]
    saved = page.inner_text("#sdc-upscale-status").split("Saved as ")[1].rstrip(".")
    assert list(outputs.rglob(saved)), "kept in the outputs folder"
    assert page.dialogs == []

