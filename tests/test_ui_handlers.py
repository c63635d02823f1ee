"""The page's handlers without a server: errors that stay in the status line, checked uploads, units, the progress bar."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from sdcompose.outputs import Outputs
from sdcompose.server.jobs import JobQueue
from sdcompose.ui.form import Form, Rejected
from sdcompose.ui.handlers import Handlers, RunEvent, page_names, progress_bar
from sdcompose.ui.history import History
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
    (*_, status, _, _, _), = run_in_page(handlers, cn2_enable=True, cn2_plugin="canny", cn2_image=str(good),
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


def test_a_waiting_run_shows_its_place_in_the_shared_queue_and_stop_withdraws_it(pipe, tmp_path):
    jobs = JobQueue()  # the one queue: here a job from elsewhere (an HTTP request, say) holds the device
    try:
        handlers = Handlers(pipe, Form({}, [], 1), Sessions(tmp_path / "session"), ["tiny-sd15"],
                            Outputs(tmp_path / "out"), jobs)
        started, release = threading.Event(), threading.Event()
        jobs.submit(lambda **_: started.set() or release.wait(120))
        assert started.wait(60)
        jobs.submit(lambda **_: None)  # one more request before the page's
        events = handlers.generate_in_page(None, **(handlers.form.defaults() | dict(prompt="waits", **SMALL)))
        assert next(events)[2] == "Queued: 2 requests ahead of this one."
        assert handlers.stop(None) == "Withdrawn from the queue."
        *_, (gallery, info, status, seed, bar, paths) = list(events)
        assert status == "Stopped: cancelled before it started." and bar == ""
        release.set()
        jobs.submit(lambda **_: None).wait(60)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png")), "it never ran"
        assert handlers.stop(None) == "Nothing is running."
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
