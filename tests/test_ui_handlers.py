"""The page's handlers without a server: errors that stay in the status line, checked uploads, units, the progress bar."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sdcompose.images import fit
from sdcompose.outputs import Outputs
from sdcompose.server.jobs import JobQueue
from sdcompose.ui.assist import Assist, fitted_size
from sdcompose.ui.form import Form, Rejected
from sdcompose.ui.handlers import Handlers, RunEvent, page_names, progress_bar
from sdcompose.ui.history import History
from sdcompose.ui.numbers import SchemaSlider
from sdcompose.ui.sessions import Sessions
from sdcompose.ui.uploads import check_image
from test_ui_form import CANNY

SMALL = dict(model="tiny-sd15", width=64, height=64, steps=2)


def handlers_for(folder, pipe=None) -> Handlers:
    """The page's handlers over ``pipe`` (default: a fresh CPU pipeline), 3 units, canny, keeping files in ``folder``."""
    if pipe is None:
        from sdcompose.pipelines.pipeline import Pipeline
        pipe = Pipeline(device="cpu")
    form = Form({"canny": CANNY}, [], 3)
    folder = Path(folder)
    return Handlers(pipe, form, Sessions(folder / "session"), ["tiny-sd15", "tiny-sdxl"], Outputs(folder / "out"))


@pytest.fixture
def handlers(pipe, tmp_path):
    return handlers_for(tmp_path, pipe)


def run_in_page(handlers, **values):
    return list(handlers.generate_in_page(None, **(handlers.form.defaults() | values)))


@pytest.mark.parametrize("content", [b"this is a text file, not a PNG", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_a_non_image_upload_becomes_one_sentence_without_the_path(tmp_path, content):
    path = tmp_path / "deep" / "server" / "folder" / "notanimage.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    rejected = check_image(str(path))
    assert isinstance(rejected, Rejected)
    assert len(rejected.reason) < 200 and "folder" not in rejected.reason and "notanimage" not in rejected.reason
    good = tmp_path / "good.png"
    Image.new("I;16", (8, 8), 40000).save(good)
    assert check_image(str(good)) == str(good), "a 16-bit map passes as the file it is"


def test_errors_stay_in_the_status_line_with_the_pages_unit_names(handlers, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    # Unit 1 off, unit 2 on with a rejected upload: the message names unit 2, as the page does.
    (*_, status, _, bar, _), = run_in_page(handlers, cn1_enable=True, cn1_plugin="canny",
                                          cn1_image=check_image(str(bad)), **SMALL)
    assert status.startswith('<span class="sdc-error">Invalid request: ControlNet unit 2: the control image: this '
                             'file is not an image') and bar == ""
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64)).save(good)
    *_, (*_, status, _, _, _) = run_in_page(handlers, cn2_enable=True, cn2_plugin="canny", cn2_image=str(good),
                                            cn2_weight=99, **SMALL)
    assert "ControlNet unit 3" in status and "weight" in status and "controls[" not in status
    assert page_names("controls[1] (canny) weight", [0, 2]) == "ControlNet unit 3 (canny) weight"


def test_a_run_in_page_saves_its_image_and_ends_with_the_success_line(handlers):
    events = run_in_page(handlers, prompt="kept", seed=11, **SMALL)
    gallery, info, status, seed, bar, paths = events[-1]
    assert seed == 11 and bar == "" and "1 image(s), seed 11" in status and "Saved as 00001-11.png" in status
    assert paths == [gallery[0][0]] and paths[0].endswith("00001-11.png")
    assert json.loads(info)["seeds"] == [11]
    page = History(handlers.outputs).browse("KEPT", 1)
    assert page[1] == paths and page[2] == 1 and "1 image(s)" in page[3]


def _drain(events):
    """A run's events and what its generator returned."""
    seen = []
    try:
        while True:
            seen.append(next(events))
    except StopIteration as end:
        return seen, end.value


def test_a_run_waiting_in_the_shared_queue_shows_its_place_and_stop_withdraws_it(pipe, tmp_path):
    jobs = JobQueue()  # the one queue (``sdcompose serve`` shares it with the HTTP APIs)
    started, release = threading.Event(), threading.Event()
    try:
        handlers = Handlers(pipe, Form({}, [], 1), Sessions(tmp_path / "session"), ["tiny-sd15"],
                            Outputs(tmp_path / "out"), jobs)
        a, b = SimpleNamespace(session_hash="a"), SimpleNamespace(session_hash="b")

        def held(cancel, preview):  # the first run: holds the device until released
            started.set()
            preview(1, 2, None)
            assert release.wait(120)
            preview(2, 2, None)
            return "first"

        first: dict = {}
        thread = threading.Thread(
            target=lambda: first.update(zip(("events", "value"), _drain(handlers.worker("a", held)))))
        thread.start()
        assert started.wait(120)
        second = handlers.generate_in_page(b, **(handlers.form.defaults() | dict(prompt="waits", **SMALL)))
        statuses = []
        for out in second:  # up to its place in the queue
            statuses.append(out[2])
            if out[2].startswith("Queued"):
                break
        assert statuses[-1] == "Queued: 1 request ahead of this one.", statuses
        assert handlers.stop(b) == "Stopped: cancelled before it started."
        *_, (gallery, info, status, seed, bar, paths) = list(second)
        assert status == "Stopped: cancelled before it started." and bar == ""
        assert handlers.stop(b) == "Nothing is running."
        assert thread.is_alive(), "the first run goes on"
        release.set()
        thread.join(120)
        assert first["value"] == "first" and [e.step for e in first["events"]] == [1, 2]
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png")), "the second never ran"
        # the queue serves the page's next run as before
        *_, (gallery, info, status, seed, bar, paths) = list(handlers.generate_in_page(
            b, **(handlers.form.defaults() | dict(prompt="runs", seed=5, **SMALL))))
        assert "1 image(s), seed 5" in status and len(paths) == 1
    finally:
        release.set()
        jobs.close()


def test_the_progress_bar_counts_steps_and_time_left():
    bar = progress_bar(RunEvent(step=5, total=20, eta=75))
    assert "Step 5 of 20" in bar and "1:15 left" in bar and "width:25.0%" in bar
    assert progress_bar(RunEvent(done=True)) == ""


def test_units_are_added_where_hidden_and_removed(handlers):
    shown, *rest = handlers.add_unit([0, 2])
    assert shown == [0, 1, 2] and rest[1]["visible"] is True and rest[3 + 1] is True
    shown, group, enable = handlers.remove_unit(1)([0, 1, 2])
    assert shown == [0, 2] and group["visible"] is False and enable is False
    shown, *groups, tabs = handlers.show_units("img2img", False, True, False)
    assert shown == [1] and [g["visible"] for g in groups] == [False, True, False]


def test_conditioners_follow_the_models_family(handlers):
    sdxl, kept = handlers.follow_conditioners("tiny-sdxl", "lineart", "canny")
    ids = [value for _, value in sdxl["choices"]]
    assert "lineart" not in ids and "canny" in ids and sdxl["value"] == ids[0] and kept["value"] == "canny"
    (sd15,) = handlers.follow_conditioners("tiny-sd15", "lineart")
    assert sd15["value"] == "lineart"


def last_status(handlers, **values):
    return run_in_page(handlers, **values)[-1][2]


def test_the_status_says_the_model_loads_before_the_first_step(handlers, pipe):
    run_in_page(handlers, prompt="warm", seed=1, **SMALL)
    assert "tiny-sd15" in pipe.loaded() and handlers.preparing("tiny-sd15") == "Starting\u2026"
    assert handlers.preparing("tiny-sdxl") == "Loading tiny-sdxl\u2026", "one base is kept: the other must load"
    assert handlers.preparing("sd15").startswith("Downloading sd15 (first use"), "a hub model not in the cache"
    first = run_in_page(handlers, prompt="warm", seed=1, **SMALL)[0]
    assert first[2] == "Starting\u2026" and first[4] == ""


@pytest.mark.parametrize("changes,message", [
    ({"width": 99999}, "width must be between 64 and 4096, got 99999"),
    ({"steps": 0}, "steps must be between 1 and 500, got 0"),
    ({"seed": -5}, "seed must be -1 (random) or between 0 and 9223372036854775807, got -5"),
    ({"seed": 2**63 - 1}, "seed must be between 0 and 9223372036854775806, got 9223372036854775807"),
])
def test_out_of_range_values_are_refused_with_the_schemas_sentence(handlers, changes, message):
    status = last_status(handlers, **(SMALL | changes))
    assert status == f'<span class="sdc-error">Invalid request: {message}</span>'
    assert "None" not in status and "e+18" not in status


def test_sliders_pass_typed_values_on_for_the_schema_to_check():
    assert SchemaSlider(64, 4096, step=8).preprocess(99999) == 99999


@pytest.mark.parametrize("mode", ["just_resize", "crop_and_resize", "resize_and_fill"])
def test_img2img_fits_the_input_image_by_its_resize_mode(handlers, photo, mode):
    kwargs = handlers.form.to_kwargs(handlers.form.defaults() | {"task": "img2img", "init_image": str(photo),
                                                                  "resize_mode": mode} | SMALL)
    assert kwargs["resize_mode"] == mode
    made = handlers.pipeline.generate(**kwargs | {"seed": 3})
    expected = fit(Image.open(photo).convert("RGB"), 64, 64, mode)
    assert np.array_equal(np.asarray(made.inputs["init_image"]), np.asarray(expected))
    assert made.metadata["request"]["resize_mode"] == mode
    assert "resize_mode" not in handlers.form.to_kwargs(handlers.form.defaults() | {"resize_mode": mode}), \
        "text to image has no input image to resize"


def test_the_input_images_size_becomes_width_and_height(pipe, photo, tmp_path):
    assist = Assist(pipe)
    width, height, status = assist.input_size("img2img", str(photo), None)
    assert (width, height) == (96, 80) and "96x80" in status
    editor = {"background": Image.new("RGB", (203, 101)), "layers": []}
    assert assist.input_size("inpaint", None, editor)[:2] == [200, 96]
    assert fitted_size(8000, 2000) == (4096, 1024) and fitted_size(10, 10) == (64, 64)


def test_the_token_counter_counts_what_the_model_gets(pipe):
    assist = Assist(pipe)
    prompt_line, negative_line = assist.prompt_tokens("tiny-sd15", "a lighthouse", "fog", [], False)
    assert pipe.token_counts("a lighthouse", "tiny-sd15")["label"] in prompt_line and "gets" not in prompt_line
    assert pipe.token_counts("fog", "tiny-sd15")["label"] in negative_line
    with_words, _ = assist.prompt_tokens("tiny-sd15", "a lighthouse", "", ["tiny-lora-sd15"], True)
    assert "the model gets: a lighthouse, tinystyle" in with_words
    assert pipe.token_counts("a lighthouse, tinystyle", "tiny-sd15")["label"] in with_words
    broken, _ = assist.prompt_tokens("tiny-sd15", "a (lighthouse", "", [], False)
    assert "sdc-error" in broken
    assert assist.prompt_tokens("tiny-sd15", "", "", [], False) == ["", ""]


def test_rescanning_the_model_folders_reports_what_changed(pipe):
    update, status = Assist(pipe).refresh("tiny-sd15")
    assert update["value"] == "tiny-sd15" and "tiny-sd15" in [value for _, value in update["choices"]]
    assert status.startswith("Model folders scanned")
