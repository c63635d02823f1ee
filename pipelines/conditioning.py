"""Control sources to control maps: decoding a unit's input, running its conditioner plugin, and caching the
map by content hash and params (in memory, and on disk between processes: pipelines/map_cache.py); annotator
weights are fetched only when a plugin asks for one."""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from sdcompose.errors import ValidationError
from sdcompose.images import MAX_BYTES, MAX_PIXELS, fit, load_mask, load_rgb, open_image, pixel_budget, to_rgb
from sdcompose.pipelines import adapter_uses
from sdcompose.pipelines.catalog import Catalog
from sdcompose.pipelines.loader import Loader
from sdcompose.pipelines.map_cache import MapCache, annotator_identity, disk_key
from sdcompose.pipelines.resolve import Plan, Unit
from sdcompose.plugins.api import ControlSource, PluginContext, PluginError, check_params
from sdcompose.plugins.contain import plugin_code
from sdcompose.request import LIMITS, Control
from sdcompose.settings import Settings

MAPS_KEPT = 32  # control maps kept in memory between requests


class Conditioning:
    def __init__(self, catalog: Catalog, loader: Loader, device: str, dtype: Any,
                 settings: Settings | None = None) -> None:
        self.catalog, self.loader, self.device, self.dtype = catalog, loader, device, dtype
        self.disk = MapCache(settings.map_cache, settings.map_cache_bytes()) if settings else MapCache(None, 0)
        self._maps: OrderedDict[str, Image.Image] = OrderedDict()

    def inputs(self, plan: Plan) -> tuple[list[Image.Image], Any, Any, list[list[Image.Image]]]:
        """Every image a request runs on, decoded together under its pixel budget: the control maps, the init
        image and mask fitted to its size, the adapters' references (one list per adapter use)."""
        req = plan.request
        with pixel_budget("this request"):
            maps = [self.control_map(unit, req.width, req.height) for unit in plan.units]
            init = fit(load_rgb(req.init_image, "init_image"), req.width, req.height, req.resize_mode) \
                if req.init_image is not None else None
            mask = fit(load_mask(req.mask), req.width, req.height, req.resize_mode) if req.mask is not None else None
            refs = adapter_uses.references(plan.adapters)
        return maps, init, mask, refs

    def control_map(self, unit: Unit, width: int | None, height: int | None) -> Image.Image:
        """The unit's control map (its plugin's output, or the image itself when ``preprocessed``), fitted to
        ``width`` x ``height`` when both are given."""
        control, plugin = unit.control, unit.plugin
        params = check_params(plugin.params, control.params, f"conditioner {control.id!r}")
        if control.preprocessed:
            image = load_rgb(control.image, f"control map for {control.id!r}")
        else:
            source = self.source(control, plugin)
            size = (width, height) if width and height else None
            key = map_key(control.id, params, source) + (f"@{width}x{height}" if source.data is not None else "")
            image = self._maps.get(key)
            if image is None:
                image = self._from_disk_or_plugin(key, unit, source, params, size)
                self._maps[key] = image
                while len(self._maps) > MAPS_KEPT:
                    self._maps.popitem(last=False)
        if width and height:
            image = fit(image, width, height, control.resize_mode)
        return image

    def _from_disk_or_plugin(self, key: str, unit: Unit, source: ControlSource, params: dict[str, Any],
                             size: tuple[int, int] | None) -> Image.Image:
        """The map from the disk cache, else made by the plugin (and stored, unless it opts out: ``cache_maps``)."""
        if not getattr(unit.plugin, "cache_maps", True):
            return self._preprocess(unit, source, params, size)
        ids = {i: unit.annotators.get(i, i) for i in unit.plugin.annotators}
        file_key = disk_key(key, unit.plugin, size, self.device, self.dtype, annotator_identity(self.catalog, ids))
        image = self.disk.get(file_key)
        if image is None:
            image = self._preprocess(unit, source, params, size)
            self.disk.put(file_key, image)
        return image

    def _preprocess(self, unit: Unit, source: ControlSource, params: dict[str, Any],
                    size: tuple[int, int] | None) -> Image.Image:
        control, plugin = unit.control, unit.plugin
        ctx = PluginContext(device=self.device, dtype=self.dtype, size=size,
                            weights=LazyWeights(plugin.annotators, lambda i: self.annotator(unit.annotators.get(i, i))))
        with plugin_code(f"conditioner {control.id!r} failed on its input"):  # fails this request only
            image = plugin.preprocess(source, ctx, params)
        if not isinstance(image, Image.Image):
            raise PluginError(f"conditioner {control.id!r} returned {type(image).__name__}, not a PIL image")
        if image.width * image.height > MAX_PIXELS:
            raise PluginError(f"conditioner {control.id!r} returned a {image.width}x{image.height} map; "
                              f"the limit is {MAX_PIXELS} pixels")
        return to_rgb(image)

    @staticmethod
    def source(control: Control, plugin: Any) -> ControlSource:
        """What the plugin is given: parsed JSON (a pose file) for plugins that take it, else the decoded image."""
        data = control.image
        wants_json = "json" in plugin.inputs
        if wants_json and isinstance(data, (dict, list)):
            return ControlSource(data=data, name="json")
        if wants_json and isinstance(data, (str, Path)) and str(data).lower().endswith(".json"):
            path = Path(data)
            try:
                if path.stat().st_size > MAX_BYTES:
                    raise ValidationError(f"{path} is larger than {MAX_BYTES // 2**20} MB")
                return ControlSource(data=json.loads(path.read_text(encoding="utf-8")), name=str(path))
            except OSError as exc:
                raise ValidationError(f"cannot read {path}: {exc.strerror}") from None
            except (ValueError, RecursionError) as exc:
                raise ValidationError(f"{path} is not valid JSON: {exc}") from None
        raw = open_image(data, f"control image for {control.id!r}")
        return ControlSource(image=to_rgb(raw), raw=raw, name=str(data) if isinstance(data, (str, Path)) else "")

    def annotator(self, model_id: str) -> Path:
        return self.loader.verified_path(self.catalog.get(model_id, "annotator"))


def map_key(plugin_id: str, params: dict[str, Any], source: ControlSource) -> str:
    """The cache key of a control map: the plugin, its params and the input's content."""
    digest = hashlib.sha256(json.dumps([plugin_id, params], sort_keys=True, default=str).encode())
    if source.data is not None:
        digest.update(json.dumps(source.data, sort_keys=True, default=str).encode())
    else:
        raw = source.raw
        digest.update(f"{raw.mode}{raw.size}".encode())
        digest.update(raw.tobytes())
    return digest.hexdigest()


class LazyWeights(Mapping):
    """A plugin's annotator weights, fetched and verified only when the plugin asks for one."""

    def __init__(self, ids: tuple[str, ...], resolve: Callable[[str], Path]) -> None:
        self._ids, self._resolve, self._paths = tuple(ids), resolve, {}

    def __getitem__(self, model_id: str) -> Path:
        if model_id not in self._ids:
            raise KeyError(model_id)
        if model_id not in self._paths:
            self._paths[model_id] = self._resolve(model_id)
        return self._paths[model_id]

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def target_size(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """Width and height for a preprocessed map; a missing one follows the map's aspect ratio."""
    low, high = LIMITS["size"]
    for name, value in (("width", width), ("height", height)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise ValidationError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    if width is None:
        width = max(1, round(size[0] * height / size[1]))
    if height is None:
        height = max(1, round(size[1] * width / size[0]))
    return width, height
