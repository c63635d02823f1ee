"""The History tab and the send-to buttons: kept images listed back, and any shown image sent on to a tab.

The galleries' file paths live in server-side state (the page's selection is only an index into
them), so a browser can only send on an image the server itself listed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from sdcompose.metadata import read_png
from sdcompose.outputs import Outputs

from .widgets import escape

PER_PAGE = 24


class History:
    def __init__(self, outputs: Outputs | None) -> None:
        self.outputs = outputs

    def browse(self, search: str | None, page: int | None, move: int = 0) -> list:
        """One page of kept images. Outputs: gallery, its paths, the page number, the line saying where it is."""
        if self.outputs is None:
            return [[], [], 1, "Images are not kept on this server (it runs with `--no-save`)."]
        found = self.outputs.history(search or "", (page or 1) + move, PER_PAGE)
        gallery = [(str(e.path), f"{e.path.name} · {e.prompt[:80]}") for e in found.entries]
        where = (f"Page {found.page} of {found.pages} · {found.total} image(s)"
                 + (f" whose prompt contains \u201c{escape(search.strip())}\u201d" if search and search.strip() else "")
                 + f" · kept in `{escape(str(self.outputs.root))}`")
        return [gallery, [str(e.path) for e in found.entries], found.page, where]

    def pager(self, move: int):
        return lambda search, page: self.browse(search, page, move)

    # ---- the selected image and where it goes ----------------------------------------------------
    @staticmethod
    def select(paths: list[str] | None, evt: gr.SelectData) -> list:
        """The image clicked in a gallery. Outputs: its path, the line under the gallery naming it."""
        index = evt.index if isinstance(evt.index, int) else None
        path = paths[index] if paths and index is not None and 0 <= index < len(paths) else None
        return [path, f"Selected: {escape(Path(path).name)}" if path else ""]

    @staticmethod
    def _need(path: str | None) -> bool:
        if path is None or not Path(path).is_file():
            gr.Warning("Select an image in the gallery first.")
            return False
        return True

    def to_img2img(self, path: str | None) -> list:
        """Outputs: the input image, the task, the main tabs, the task tabs."""
        if not self._need(path):
            return [gr.skip()] * 4
        return [path, "img2img", gr.Tabs(selected="generate"), gr.Tabs(selected="img2img")]

    def to_inpaint(self, path: str | None) -> list:
        if not self._need(path):
            return [gr.skip()] * 4
        return [{"background": path, "layers": [], "composite": path}, "inpaint", gr.Tabs(selected="generate"),
                gr.Tabs(selected="inpaint")]

    def to_unit(self, path: str | None, shown: list[int] | None) -> list:
        """Into ControlNet unit 1, enabled and shown. Outputs: its image, Enable, the shown units, its group,
        the main tabs."""
        if not self._need(path):
            return [gr.skip()] * 5
        return [path, True, sorted(set(shown or []) | {0}), gr.update(visible=True), gr.Tabs(selected="generate")]

    def to_info(self, path: str | None) -> list:
        if not self._need(path):
            return [gr.skip()] * 2
        return [path, gr.Tabs(selected="info")]

    def seed_of(self, path: str | None, last: int | None) -> Any:
        """The selected image's seed (read from its PNG), else the last run's first seed."""
        if path is not None and Path(path).is_file():
            try:
                return read_png(path)[0]["seed"]
            except ValueError:
                pass
        if last is None:
            gr.Info("No image yet: generate one first.")
            return gr.skip()
        return last
