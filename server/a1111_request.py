"""An AUTOMATIC1111 ``txt2img``/``img2img`` payload (with sd-webui-controlnet units) as sdcompose requests.

Each field is honoured, accepted because it changes nothing (or only at the value that changes nothing), or
refused with a 422 that names it: never dropped where it would change the picture.
"""
from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass
from typing import Any

from PIL import ImageFilter, ImageOps

from sdcompose.errors import SdcomposeError
from sdcompose.images import load_mask
from sdcompose.pipelines.resolve import lora_by_name, named
from sdcompose.prompt_syntax import lora_tags
from sdcompose.pipelines.hires import target_size
from sdcompose.request import LIMITS, Control, GenerationRequest, Hires, IpAdapter, Lora, bounds

from . import a1111_names as names
from .inputs import FieldError, image_bytes

# accepted whatever their value: they change nothing in the picture (or are read elsewhere)
NO_EFFECT = {"save_images", "do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards",
             "eta", "s_tmax", "include_init_images", "image_cfg_scale", "comments", "force_task_id", "infotext",
             "sampler_index", "script_args", "subseed",
             "refiner_switch_at", "inpaint_full_res_padding", "mask_round", "user", "disable_extra_networks"}
# accepted only at these values (A1111's defaults, and what webuiapi sends); anything else is refused
AT_DEFAULT = {"restore_faces": (False, None), "tiling": (False, None),
              "styles": ([], None), "subseed_strength": (0, 0.0, None), "seed_resize_from_h": (-1, 0, None),
              "seed_resize_from_w": (-1, 0, None), "s_churn": (0, 0.0, None), "s_tmin": (0, 0.0, None),
              "s_noise": (1, 1.0, None), "script_name": (None, ""), "refiner_checkpoint": (None, ""),
              "initial_noise_multiplier": (1, 1.0, None), "resize_mode": (0, None), "latent_mask": (None, ""),
              "firstpass_image": (None, ""), "sampler_index": ()}
WHY = {"restore_faces": "sdcompose has no face restorer",
       "tiling": "sdcompose has no seamless tiling", "styles": "sdcompose has no saved styles",
       "subseed_strength": "variation seeds are not in sdcompose", "resize_mode": "img2img resizes with 0 (Just resize)",
       "script_name": "A1111 scripts do not run in sdcompose", "refiner_checkpoint": "sdcompose has no refiner pass"}
HONOURED = {"prompt", "negative_prompt", "seed", "sampler_name", "scheduler", "steps", "cfg_scale", "width",
            "height", "batch_size", "n_iter", "override_settings", "send_images", "alwayson_scripts"}
IMG2IMG = {"init_images", "denoising_strength", "mask", "mask_blur", "inpainting_fill", "inpaint_full_res",
           "inpainting_mask_invert"}
OVERRIDES_NO_EFFECT = {"CLIP_stop_at_last_layers": (1, None), "sd_vae": ("Automatic", "None", None),
                       "samples_format": ("png",)}
UNIT_NO_EFFECT = {"low_vram", "lowvram", "processor_res", "pixel_perfect", "hr_option", "save_detected_map",
                  "is_ui", "input_mode", "batch_images", "output_dir", "loopback", "guessmode", "advanced_weighting",
                  "ipadapter_input", "effective_region_mask", "inpaint_crop_input_image", "union_control_type",
                  "pulid_mode", "animatediff_batch", "batch_mask_dir", "batch_modifiers", "batch_image_dir"}
UNIT_FIELDS = {"enabled", "image", "input_image", "mask", "mask_image", "module", "model", "weight", "guidance_start",
               "guidance_end", "control_mode", "resize_mode", "threshold_a", "threshold_b"} | UNIT_NO_EFFECT
# the hires fix (txt2img, enable_hr true): honoured; the rest only at "the same as the first pass"
HIRES = {"enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
         "denoising_strength"}
HIRES_SAME = {"hr_checkpoint_name": (None, "", "Use same checkpoint"),
              "hr_sampler_name": (None, "", "Use same sampler"), "hr_scheduler": (None, "", "Use same scheduler"),
              "hr_prompt": (None, ""), "hr_negative_prompt": (None, ""),
              "hr_additional_modules": (None, [], ["Use same choices"]), "firstphase_width": (None, 0),
              "firstphase_height": (None, 0)}
HR_DENOISE = 0.7  # A1111's (and webuiapi's) denoising_strength for the hires pass
MAX_IMAGES = 64


@dataclass
class Plan:
    """What one A1111 call runs: ``n_iter`` requests of ``batch_size`` images each, seeds counting up."""

    requests: list[GenerationRequest]
    send_images: bool
    sampler_name: str
    schedule: str


def plan(payload: Any, task: str, default_model: str, catalog: Any) -> Plan:
    if not isinstance(payload, dict):
        raise FieldError("body", "the body must be a JSON object")
    known = HONOURED | NO_EFFECT | set(AT_DEFAULT) | (IMG2IMG if task == "img2img" else set())
    if task == "txt2img":
        known |= HIRES | set(HIRES_SAME)
    for key, value in payload.items():
        if key not in known:
            from sdcompose.errors import suggest
            raise FieldError(key, f"unknown field {key!r} for {task}{suggest(key, known)}")
        if key in AT_DEFAULT and AT_DEFAULT[key] and not _at(value, AT_DEFAULT[key]):
            why = WHY.get(key, "sdcompose cannot honour it yet")
            raise FieldError(key, f"{key}={str(value)[:60]} is not supported ({why}); leave it at "
                                  f"{AT_DEFAULT[key][0]!r}")
    p = payload.get
    model = _model(p("override_settings") or {}, default_model, catalog)
    prompt, loras = _loras(_text(p("prompt", ""), "prompt"), catalog, not p("disable_extra_networks", False))
    sampler = p("sampler_name") or p("sampler_index") or "Euler"
    schedule = p("scheduler") or "automatic"
    base = dict(prompt=prompt, negative_prompt=_text(p("negative_prompt", ""), "negative_prompt"), model=model,
                loras=loras, steps=whole(p("steps", 20), "steps"), guidance=p("cfg_scale", 7.0),
                width=whole(p("width", 512), "width"), height=whole(p("height", 512), "height"),
                scheduler=names.scheduler_id(sampler, schedule), batch=whole(p("batch_size", 1), "batch_size"))
    if task == "img2img":
        base |= _img2img(payload)
    else:
        base["hires"] = _hires(payload, base, catalog)
    units = _units(p("alwayson_scripts") or {}, base.get("init_image"), catalog, model)
    base["controls"] = [u for u in units if isinstance(u, Control)]
    base["ip_adapters"] = [u for u in units if isinstance(u, IpAdapter)]  # sd-webui-controlnet's ip-adapter units
    n_iter = whole(p("n_iter", 1), "n_iter")
    if not 1 <= n_iter or n_iter * base["batch"] > MAX_IMAGES:
        raise FieldError("n_iter", f"n_iter x batch_size must be between 1 and {MAX_IMAGES}")
    seed = p("seed", -1)
    if seed is None or (isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed == -1):
        seed = secrets.randbelow(2**32)
    seed = whole(seed, "seed")
    if not 0 <= seed <= LIMITS["seed"][1] - MAX_IMAGES:
        raise FieldError("seed", f"seed must be -1 (random) or between 0 and {LIMITS['seed'][1] - MAX_IMAGES}")
    requests = [GenerationRequest(**base, seed=seed + i * base["batch"]) for i in range(n_iter)]
    send = p("send_images", True)
    return Plan(requests, send is not False, str(sampler), str(schedule))


def _at(value: Any, allowed: tuple) -> bool:
    """``value`` is one of ``allowed`` (true and 1 are not the same here)."""
    return any(value is a if isinstance(value, bool) or isinstance(a, bool) else value == a for a in allowed)


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise FieldError(field, f"{field} must be text, got {type(value).__name__}")
    return value


def whole(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
            float("inf"), float("-inf")) or int(value) != value:
        raise FieldError(field, f"{field} must be a whole number, got {str(value)[:60]!r}")
    return int(value)


def _model(overrides: Any, default: str, catalog: Any) -> str:
    if not isinstance(overrides, dict):
        raise FieldError("override_settings", "override_settings must be an object")
    for key, value in overrides.items():
        if key == "sd_model_checkpoint":
            continue
        if key not in OVERRIDES_NO_EFFECT or value not in OVERRIDES_NO_EFFECT[key]:
            raise FieldError(f"override_settings.{key}", f"override_settings.{key} is not supported by sdcompose "
                                                         "(only sd_model_checkpoint is)")
    return checkpoint(overrides.get("sd_model_checkpoint", default), catalog, "override_settings.sd_model_checkpoint")


def checkpoint(value: Any, catalog: Any, field: str) -> str:
    name = names.model_name(value) if isinstance(value, str) else None
    entry = catalog.find(name, "base") if name else None  # an id, a file name, or a scanned folder's sub/name
    if entry is None:
        bases = [i for i, e in catalog.entries.items() if e.kind == "base"]
        from sdcompose.errors import suggest
        raise FieldError(field, f"{field} {str(value)[:80]!r} is not a base model in models.yaml "
                                f"(GET /sdapi/v1/sd-models lists them){suggest(str(name), bases)}")
    return entry.id


def _loras(prompt: str, catalog: Any, apply: bool) -> tuple[str, list[Lora]]:
    """``<lora:name:weight>`` tags taken out of the prompt as LoRAs (a models.yaml id or a LoRA's file name), read
    by the one prompt parser (``sdcompose.prompt_syntax``); ``apply`` false (``disable_extra_networks``): dropped."""
    try:
        text, tags = lora_tags(prompt)
        loras = [Lora(lora_by_name(catalog, name).id, weight) for name, weight in tags] if apply else []
    except SdcomposeError as exc:
        raise FieldError("prompt", f"prompt: {exc} (GET /sdapi/v1/loras lists the LoRAs)") from None
    return re.sub(r"[ \t]{2,}", " ", text).strip(), loras


def _hires(payload: dict, base: dict[str, Any], catalog: Any) -> Hires | None:
    """A1111's hires fix as sdcompose's ``Hires``; None while ``enable_hr`` is false (the hr_* fields then change
    nothing). The target size is ``hr_scale`` times the size, or ``hr_resize_x``/``hr_resize_y`` (one of them 0:
    the other side follows the aspect ratio)."""
    p = payload.get
    enable = p("enable_hr", False)
    if enable is not None and not isinstance(enable, bool):
        raise FieldError("enable_hr", f"enable_hr must be true or false, got {str(enable)[:60]!r}")
    if not enable:
        return None
    for key, same in HIRES_SAME.items():
        if key in payload and not _at(p(key), same) and not (key == "hr_prompt" and p(key) == p("prompt")) \
                and not (key == "hr_negative_prompt" and p(key) == p("negative_prompt", "")):
            raise FieldError(key, f"{key}={str(p(key))[:60]} is not supported (sdcompose's second pass uses the "
                                  f"first pass's); leave it at {same[-1]!r}")
    low, high = bounds(Hires, "scale")
    size = base["width"], base["height"]
    resize = [whole(p(f"hr_resize_{axis}", 0) or 0, f"hr_resize_{axis}") for axis in "xy"]
    field = "hr_scale" if not any(resize) else "hr_resize_x" if resize[0] else "hr_resize_y"
    scale = p("hr_scale", 2.0) if field == "hr_scale" else max(resize[0] / size[0], resize[1] / size[1])
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not low <= scale <= high:
        raise FieldError(field, f"{field} must make the second pass {low:g} to {high:g} times the first "
                                f"({size[0]}x{size[1]}), got {str(p(field))[:60]!r}")
    hires = Hires(scale=float(scale), upscaler=names.hr_upscaler(p("hr_upscaler", "Latent"), catalog),
                  steps=whole(p("hr_second_pass_steps", 0), "hr_second_pass_steps"),
                  denoise=p("denoising_strength", HR_DENOISE))
    target = target_size(*size, hires.scale)
    if any(resize) and any(r and r != t for r, t in zip(resize, target)):
        raise FieldError(field, f"hr_resize_x x hr_resize_y {resize[0]}x{resize[1]}: sdcompose scales "
                                f"{size[0]}x{size[1]} keeping its aspect ratio, to {target[0]}x{target[1]} here; "
                                "give that size, or one side and 0 for the other")
    return hires


def _img2img(payload: dict) -> dict[str, Any]:
    images = payload.get("init_images") or []
    if not isinstance(images, list) or not images:
        raise FieldError("init_images", "init_images must be a list with one base64 image")
    if len(images) > 1:
        raise FieldError("init_images", "init_images: sdcompose takes one init image per call")
    out: dict[str, Any] = {"init_image": image_bytes(images[0], "init_images[0]"),
                           "strength": payload.get("denoising_strength", 0.75)}
    mask = payload.get("mask")
    if mask:
        for key, allowed, default in (("inpainting_fill", (1,), 0), ("inpaint_full_res", (False, 0), True)):
            value = payload.get(key, default)  # A1111's defaults: fill, and only the masked area
            if isinstance(value, bool) != isinstance(allowed[0], bool) or value not in allowed:
                meaning = {"inpainting_fill": "only 1 (original) is supported",
                           "inpaint_full_res": "inpainting only the masked area is not supported; send false"}
                raise FieldError(key, f"{key}={str(value)[:20]} with a mask: {meaning[key]}")
        picture = load_mask(image_bytes(mask, "mask"), "mask")
        if payload.get("inpainting_mask_invert", 0) not in (0, 1):
            raise FieldError("inpainting_mask_invert", "inpainting_mask_invert must be 0 or 1")
        if payload.get("inpainting_mask_invert", 0) == 1:
            picture = ImageOps.invert(picture)
        blur = payload.get("mask_blur", 4)
        if isinstance(blur, bool) or not isinstance(blur, (int, float)) or not 0 <= blur <= 64:
            raise FieldError("mask_blur", "mask_blur must be a number between 0 and 64")
        if blur:
            picture = picture.filter(ImageFilter.GaussianBlur(blur))
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        out["mask"] = buf.getvalue()
    return out


def _units(scripts: Any, init_image: bytes | None, catalog: Any, model: str) -> list[Control | IpAdapter]:
    if not isinstance(scripts, dict):
        raise FieldError("alwayson_scripts", "alwayson_scripts must be an object")
    controls: list[Control | IpAdapter] = []
    for name, script in scripts.items():
        args = script.get("args", []) if isinstance(script, dict) else None
        if not isinstance(args, list):
            raise FieldError(f"alwayson_scripts.{name}", f"alwayson_scripts.{name} must be {{\"args\": [...]}}")
        if str(name).lower() != "controlnet":
            if args not in ([], [False]):
                raise FieldError(f"alwayson_scripts.{name}", f"alwayson_scripts.{name}: sdcompose runs no A1111 "
                                                             "scripts but ControlNet")
            continue
        for i, unit in enumerate(args):
            control = _unit(unit, f"alwayson_scripts.controlnet.args[{i}]", init_image, catalog, model)
            if control is not None:
                controls.append(control)
    return controls


def _t2i_adapter(catalog: Any, base_id: str, plugin: str, field: str, name: str) -> Any:
    """The models.yaml T2I-Adapter serving ``plugin`` for the base's family (its tiny one for a tiny base)."""
    base = catalog.get(base_id, "base")
    found = catalog.serving(plugin, base.family, base.tiny, kind="t2i_adapter")
    if found is None:
        raise FieldError(field, f"{field} {name[:80]!r} is a T2I-Adapter models.yaml lacks: add a {base.family} "
                                f"t2i_adapter entry with conditioner: {plugin} (docs/plugins.md, T2I-Adapters)")
    return found


def _unit(unit: Any, where: str, init_image: bytes | None, catalog: Any,
          model_id_of_base: str) -> Control | IpAdapter | None:
    if not isinstance(unit, dict):
        raise FieldError(where, f"{where} must be an object (a ControlNet unit)")
    for key in unit:
        if key not in UNIT_FIELDS:
            raise FieldError(f"{where}.{key}", f"unknown ControlNet unit field {key!r} in {where}")
    if unit.get("enabled", True) is False:
        return None
    if unit.get("mask") or unit.get("mask_image"):
        raise FieldError(f"{where}.mask", f"{where}.mask: ControlNet unit masks are not supported by sdcompose")
    module, model = unit.get("module", "none"), unit.get("model", "None")
    if not isinstance(module, str) or not isinstance(model, str):
        raise FieldError(f"{where}.module", f"{where}: module and model must be names")
    if module in names.IP_ADAPTER_MODULES:  # sd-webui-controlnet runs IP-Adapters as ControlNet units
        return _ip_adapter(unit, where, module, model, init_image, catalog)
    preprocessed = module in names.NO_PREPROCESSOR
    model_id = names.model_name(model)
    entry = (catalog.find(model_id, "controlnet") or catalog.find(model_id, "t2i_adapter")) if model_id else None
    own = entry is not None  # a models.yaml id or a file in a model folder: used as it is
    kind = names.conditioner_for_model(model_id)
    if model_id in ("", "None", "none") or (not own and kind is None):
        raise FieldError(f"{where}.model", f"{where}.model {model_id[:80]!r} is not a ControlNet sdcompose has "
                                           "(GET /controlnet/model_list lists them)")
    if preprocessed:
        plugin, params = kind, {}
        if plugin is None:
            raise FieldError(f"{where}.model", f"{where}.model {model_id[:80]!r}: cannot tell which conditioner "
                                               "it is for; name a module")
    elif module in names.MODULES:
        plugin, params = names.MODULES[module][0], dict(names.MODULES[module][1])
        if not own and kind != plugin:
            raise FieldError(f"{where}.model", f"{where}.model {model_id[:80]!r} is for {kind}, not for module "
                                               f"{module!r}; name a models.yaml ControlNet id to pair them anyway")
    else:
        raise FieldError(f"{where}.module", f"{where}.module {module[:80]!r} is not one sdcompose has "
                                            "(GET /controlnet/module_list lists them)")
    if not own and names.is_t2i_adapter(model_id):  # A1111's T2I-Adapter name: the base family's serving entry
        entry = _t2i_adapter(catalog, model_id_of_base, plugin, f"{where}.model", model_id)
        own = True
    if plugin == "canny":
        for key, param, default in (("threshold_a", "low_threshold", 100), ("threshold_b", "high_threshold", 200)):
            value = unit.get(key, default)
            params[param] = whole(value if value not in (None, -1) else default, f"{where}.{key}")
    data = _image(unit, where, init_image)
    return Control(plugin, image=data, weight=unit.get("weight", 1.0), start=unit.get("guidance_start", 0.0),
                   end=unit.get("guidance_end", 1.0), params=params, preprocessed=preprocessed,
                   model=entry.id if own else None,  # None: the conditioner's ControlNet for the base family
                   resize_mode=names.choice(names.RESIZE_MODES, unit.get("resize_mode", "Crop and Resize"),
                                            f"{where}.resize_mode"),
                   control_mode=names.choice(names.CONTROL_MODES, unit.get("control_mode", "Balanced"),
                                             f"{where}.control_mode"))


def _image(unit: dict[str, Any], where: str, init_image: bytes | None) -> bytes:
    """A unit's image bytes: its own, else img2img's image (as sd-webui-controlnet does)."""
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, dict):  # newer clients: {"image": ..., "mask": ...}
        if image.get("mask"):
            raise FieldError(f"{where}.image.mask", f"{where}: ControlNet unit masks are not supported by sdcompose")
        image = image.get("image")
    if image:
        return image_bytes(image, f"{where}.image")
    if init_image is not None:
        return init_image
    raise FieldError(f"{where}.image", f"{where}.image is missing (a base64 image)")


def _ip_adapter(unit: dict[str, Any], where: str, module: str, model: str, init_image: bytes | None,
                catalog: Any) -> IpAdapter:
    """An ``ip-adapter_clip_*`` unit as an image prompt: its model (``ip-adapter_sd15 [6a3f6166]``) names a
    models.yaml IP-Adapter by id or file name; the unit's image is the reference."""
    model_id = names.model_name(model)
    entry = named(catalog, model_id, "ip_adapter") if model_id else None
    if entry is None:
        raise FieldError(f"{where}.model", f"{where}.model {model_id[:80]!r} is not an IP-Adapter sdcompose has "
                                           f"(module {module[:60]!r} needs one: a models.yaml ip_adapter id or file "
                                           "name)")
    return IpAdapter(entry.id, image=_image(unit, where, init_image), weight=unit.get("weight", 1.0),
                     start=unit.get("guidance_start", 0.0), end=unit.get("guidance_end", 1.0))
