"""The outputs folder: images kept as they are made, numbered per day, listed back newest first, after a restart too."""
from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
from PIL import Image

from sdcompose.outputs import Outputs
from sdcompose.request import GenerationRequest
from sdcompose.result import Result
from test_ui_form import crafted_png


def result(seeds, prompt="a lighthouse"):
    images = [Image.new("RGB", (8, 8), (seed % 256, 0, 0)) for seed in seeds]
    request = GenerationRequest(prompt=prompt, model="tiny-sd15", width=64, height=64).summary()
    metas = [{"format": 1, "task": "txt2img", "seed": seed, "request": request} for seed in seeds]
    return Result(images, metas[0], metas)


def test_each_image_is_saved_with_its_metadata_as_day_number_seed(tmp_path):
    outputs = Outputs(tmp_path / "out")
    when = time.mktime((2026, 12, 1, 12, 0, 0, 0, 0, -1))
    paths = outputs.save(result([7, 8]), when) + outputs.save(result([9]), when)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in paths] == [
        "2026-12-01/00001-7.png", "2026-12-01/00002-8.png", "2026-12-01/00003-9.png"]
    with Image.open(paths[1]) as image:
        assert '"seed": 8' in image.text["sdcompose"] and image.getpixel((0, 0)) == (8, 0, 0)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [".lock", "00001-7.png", "00002-8.png",
                                                                 "00003-9.png"], "no half-written files are left behind"


def test_a_restart_continues_the_numbers_and_lists_what_is_there(tmp_path):
    root = tmp_path / "out"
    first = Outputs(root).save(result([1, 2]))
    again = Outputs(root)  # a new server on the same folder
    assert [e.path for e in again.history().entries] == first[::-1], "newest first"
    third = again.save(result([3]))[0]
    assert third.name == "00003-3.png"
    assert [e.seed for e in again.history().entries] == [3, 2, 1]


def test_writers_in_parallel_never_share_a_name_or_overwrite(tmp_path):
    root = tmp_path / "out"
    writers = [Outputs(root) for _ in range(4)]  # as four processes would: no shared counter
    made = []

    def write(outputs, seed):
        made.extend(outputs.save(result([seed] * 5)))
    threads = [threading.Thread(target=write, args=(w, i)) for i, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    names = [p.name for p in made]
    assert len(names) == 20 == len(set(names)) == len(list(root.rglob("[0-9]*.png")))
    assert sorted(int(n.split("-")[0]) for n in names) == list(range(1, 21))


def test_history_pages_searches_by_prompt_and_skips_foreign_files(tmp_path):
    root = tmp_path / "out"
    outputs = Outputs(root)
    for i in range(5):
        outputs.save(result([i], prompt=f"a Red fox {i}" if i % 2 else f"a blue whale {i}"))
    day = next(root.iterdir())
    Image.new("RGB", (4, 4)).save(day / "00099-1.png")  # no sdcompose metadata: not listed
    (day / "00098-2.png").write_bytes(b"not a png")
    (day / "notes.txt").write_text("ignored")
    everything = outputs.history(per_page=2)
    assert (everything.total, everything.pages, [e.seed for e in everything.entries]) == (5, 3, [4, 3])
    last = outputs.history(page=99, per_page=2)
    assert (last.page, [e.seed for e in last.entries]) == (3, [0]), "a page past the end shows the last one"
    foxes = outputs.history("red FOX")
    assert [e.prompt for e in foxes.entries] == ["a Red fox 3", "a Red fox 1"]
    assert outputs.history("no such thing").total == 0 and outputs.history("no such thing").pages == 1
    assert Outputs(tmp_path / "never-made").history().total == 0


def test_history_reads_a_real_sdcompose_png_without_its_embedded_inputs(tmp_path):
    import sdcompose
    control = sdcompose.Control("canny", Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                                          dtype=np.uint8)))
    day = tmp_path / "out" / "2026-01-02"
    day.mkdir(parents=True)
    crafted_png(day / "00001-9.png", prompt="a tower", model="tiny-sd15", width=64, height=64, seed=9,
                controls=[control])
    (entry,) = Outputs(tmp_path / "out").history().entries
    assert (entry.prompt, entry.seed, entry.width, entry.model) == ("a tower", 9, 64, "tiny-sd15")
    assert re.fullmatch(r"\d{5}-9\.png", entry.path.name)


def test_the_default_folder_is_under_sdcompose_home(home):
    assert Outputs().root == home / "outputs"
