"""X/Y/Z plot: one request over a grid of axes; every cell a full generation with its own metadata, one
labelled grid per Z value, saved beside the cells."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import sdcompose
from sdcompose.metadata import read_png
from sdcompose.outputs import Outputs
from sdcompose.request import GenerationRequest
from sdcompose.xyz import Axis, cells, draw_grid, plot

SMALL = dict(model="tiny-sd15", width=64, height=64, steps=1, seed=5)


def test_a_two_axis_plot_runs_each_cell_and_draws_a_labelled_grid(pipe, tmp_path):
    request = GenerationRequest(prompt="a red fox", loras=[sdcompose.Lora("tiny-lora-sd15", 0.5)], **SMALL)
    axes = [Axis.parse("steps", "1, 2"), Axis.parse("lora_weight", "0, 1.5")]
    steps = []
    made = plot(pipe, request, axes, progress=lambda step, total: steps.append((step, total)))
    assert [c.index for c in made.cells] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    assert [(c.request.steps, c.request.loras[0].weight) for c in made.cells] == [(1, 0), (2, 0), (1, 1.5), (2, 1.5)]
    assert steps[-1] == (6, 6) and [s for s, _ in steps] == sorted(s for s, _ in steps), "one job's progress"
    (grid,) = made.grids
    cell = pixels(made.cells[3].result.images[0])
    assert grid.width > 128 and grid.height > 128
    assert np.array_equal(pixels(grid)[-64:, -64:], cell), "the last cell is drawn bottom right, unchanged"
    assert pixels(grid)[:10].min() < 100, "the X labels are drawn above the columns"
    first, last = (pixels(c.result.images[0]) for c in (made.cells[0], made.cells[3]))
    assert not np.array_equal(first, last)

    kept = Outputs(tmp_path / "out")
    paths = [path for c in made.cells for path in kept.save(c.result)]
    grid_path = kept.save_grid(grid, made.grid_metadata[0])
    assert grid_path.parent.name == "grids" and grid_path.name == "00001-grid.png"
    meta = json.loads(Image.open(grid_path).text["sdcompose"])
    with pytest.raises(sdcompose.ValidationError, match="an X/Y/Z plot's grid, not one generation"):
        read_png(grid_path)
    assert [a["kind"] for a in meta["xyz"]["axes"]] == ["steps", "lora_weight"]
    assert meta["xyz"]["axes"][1]["values"] == [0.0, 1.5] and meta["xyz"]["request"]["prompt"] == "a red fox"
    assert [e.path for e in kept.history().entries] == paths[::-1], "the cells are in the history, the grid is not"
    remade = pipe.reproduce(paths[3])  # each cell's PNG makes itself again
    assert np.array_equal(pixels(remade.images[0]), last)


def test_three_axes_give_a_grid_per_z_value(pipe):
    request = GenerationRequest(prompt="a tower at dusk", **SMALL)
    axes = [Axis.parse("seed", "1, 2"), Axis.parse("prompt_sr", "dusk, dawn"), Axis.parse("scheduler", "Euler, ddim")]
    made = plot(pipe, request, axes)
    assert len(made.cells) == 8 and len(made.grids) == 2
    assert [c.request.prompt for c in made.cells[:4]] == ["a tower at dusk"] * 2 + ["a tower at dawn"] * 2
    assert {c.request.scheduler for c in made.cells[4:]} == {"ddim"}
    assert [c.request.seed for c in made.cells[:2]] == [1, 2]
    assert json.dumps(made.grid_metadata[1])  # JSON-ready
    assert made.grid_metadata[1]["xyz"]["z"] == 1


@pytest.mark.parametrize("axes,message", [
    ([("steps", "1, x")], "the Steps axis takes whole numbers, got 'x'"),
    ([("steps", "1.5")], "the Steps axis takes whole numbers, got '1.5'"),
    ([("steps", " , ")], "the Steps axis has no values"),
    ([("colour", "1")], "an X/Y/Z axis is one of seed, steps"),
    ([("steps", "1, 501")], "X axis (Steps) value 501: steps must be between 1 and 500, got 501"),
    ([("guidance", "1"), ("guidance", "2")], "two X/Y/Z axes vary the same thing"),
    ([("prompt_sr", "cat, dog")], "Prompt S/R: 'cat' is not in the prompt"),
    ([("control_weight", "0.5")], "the ControlNet weight axis needs a ControlNet unit in the request"),
    ([("seed", ",".join(map(str, range(11)))), ("steps", ",".join(map(str, range(1, 11))))],
     "the plot has 110 cells; at most 100"),
])
def test_bad_axes_are_one_sentence_before_anything_runs(axes, message):
    request = GenerationRequest(prompt="a fox", **SMALL)
    with pytest.raises(sdcompose.ValidationError) as caught:
        cells(request, [Axis.parse(kind, text) for kind, text in axes])
    assert message in str(caught.value)


def test_grid_labels_sit_beside_rows_and_above_columns():
    black = Image.new("RGB", (32, 32), "black")
    grid = draw_grid([[black, black]], ["X: 1", "X: 2"], ["Y: a"], "Z: 3")
    array = pixels(grid)
    assert array[-32:, -64:].max() == 0 and array[:2, :].min() == 255 and array[:-32, :].min() < 128


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_the_page_runs_a_plot_as_one_job_and_keeps_the_grid_and_cells(pipe, tmp_path):
    from sdcompose.ui.form import Form
    from sdcompose.ui.handlers import Handlers
    from sdcompose.ui.plot import PlotRun
    from sdcompose.ui.sessions import Sessions
    form = Form({}, [], 1)
    handlers = Handlers(pipe, form, Sessions(tmp_path / "session"), ["tiny-sd15"], Outputs(tmp_path / "out"))
    values = form.defaults() | SMALL | {"prompt": "a plotted fox", "xyz_x_kind": "steps", "xyz_x_values": "1, 2",
                                        "xyz_y_kind": "", "xyz_z_kind": "guidance", "xyz_z_values": "3"}
    events = list(PlotRun(handlers).in_page(None, **values))
    gallery, info, status, seed, bar, paths = events[-1]
    assert "X/Y/Z plot: 2 image(s) and 1 grid(s)" in status and "Grid saved as grids/00001-grid.png" in status
    assert paths[0].endswith("grids/00001-grid.png") and len(paths) == 3 and seed == 5
    assert [caption for _, caption in gallery[1:]] == ["Steps: 1, CFG scale: 3", "Steps: 2, CFG scale: 3"]
    assert any("Step 3 of 3" in e[4] for e in events[:-1]), "one progress bar over every cell's steps"
    assert json.loads(info)["xyz"]["axes"][0]["values"] == [1, 2]
    assert read_png(paths[2])[0]["request"]["steps"] == 2 and bar == ""
    (*_, status, _, _, _), = PlotRun(handlers).in_page(None, **(values | {"xyz_x_kind": "", "xyz_z_kind": ""}))
    assert status == '<span class="sdc-error">Invalid request: X/Y/Z plot: pick what at least one axis varies, ' \
                     'and its values</span>'
