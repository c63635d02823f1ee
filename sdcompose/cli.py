"""The ``sdcompose`` command: generate, reproduce, preprocess, upscale, batch, models, plugins, ui, serve.

Errors print one line and exit 2; no traceback unless SDCOMPOSE_DEBUG=1.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from sdcompose.errors import SdcomposeError, ValidationError, quote
from sdcompose.request import (ATTENTION_BACKENDS, CONTROL_MODES, MEMORY_MODES, RESIZE_MODES, SCHEDULERS, Control,
                               GenerationRequest, Hires, IpAdapter, Lora, bounds, default)
from sdcompose.settings import DEFAULT_MODEL, Settings

CONTROL_FIELDS = {"weight": float, "start": float, "end": float, "model": str, "resize_mode": str,
                  "control_mode": str, "preprocessed": lambda v: v.lower() in ("1", "true", "yes")}


def _split_spec(flag: str, spec: str, usage: str) -> tuple[str, str, list[tuple[str, str]]]:
    """``ID=PATH[:key=value...]`` as (id, path, options); a path may hold ':' (the first ``key=`` part ends it)."""
    plugin_id, sep, rest = spec.partition("=")
    if not sep or not plugin_id or not rest:
        raise ValidationError(f"{flag} {quote(spec)}: expected {usage}")
    parts = rest.split(":")
    split = next((i for i, part in enumerate(parts) if i > 0 and "=" in part), len(parts))
    options = []
    for option in parts[split:]:
        key, eq, value = option.partition("=")
        if not eq:
            raise ValidationError(f"{flag} {quote(spec)}: option {quote(option)} is not key=value")
        options.append((key, value))
    return plugin_id, ":".join(parts[:split]), options


def parse_control(spec: str) -> Control:
    """``ID=PATH[:key=value...]``: weight/start/end/model/resize_mode/control_mode/preprocessed, else plugin params."""
    plugin_id, image, options = _split_spec("--control", spec, "ID=IMAGE[:key=value...], e.g. canny=photo.png:weight=0.8")
    fields, params = {}, {}
    for key, value in options:
        try:
            (fields if key in CONTROL_FIELDS else params)[key] = CONTROL_FIELDS.get(key, str)(value)
        except ValueError:
            raise ValidationError(f"--control {quote(spec)}: {key} must be a number, got {quote(value)}") from None
    return Control(plugin_id, image=image, params=params, **fields)


def parse_ip_adapter(spec: str) -> IpAdapter:
    """``ID=IMAGE[:image=IMAGE2...][:weight=W:start=S:end=E]``: more ``image=`` options add references."""
    model_id, image, options = _split_spec("--ip-adapter", spec, "ID=IMAGE[:image=IMAGE2][:weight=W:start=S:end=E], "
                                           "e.g. ip-adapter-sd15=ref.png:weight=0.6")
    images, fields = [image], {}
    for key, value in options:
        if key == "image":
            images.append(value)
        elif key in ("weight", "start", "end"):
            try:
                fields[key] = float(value)
            except ValueError:
                raise ValidationError(f"--ip-adapter {quote(spec)}: {key} must be a number, got {quote(value)}") from None
        else:
            raise ValidationError(f"--ip-adapter {quote(spec)}: unknown option {quote(key)} (image, weight, start, end)")
    return IpAdapter(model_id, image=images if len(images) > 1 else image, **fields)


def parse_lora(spec: str) -> Lora:
    model_id, _, weight = spec.partition(":")
    try:
        return Lora(model_id, float(weight)) if weight else Lora(model_id)
    except ValueError:
        raise ValidationError(f"--lora {quote(spec)}: expected ID[:WEIGHT], e.g. papercut:0.7") from None


def parse_params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValidationError(f"--param {quote(pair)} is not key=value")
        out[key] = value
    return out


def _pipeline(args: argparse.Namespace):
    from sdcompose.pipelines.pipeline import Pipeline
    return Pipeline(models=args.models, device=args.device, dtype=args.dtype, folders=args.folder or None)


def _progress_bar(quiet: bool):
    if quiet:
        return None, lambda: None
    from tqdm import tqdm
    bar: dict[str, Any] = {}

    def update(step: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, unit="step", file=sys.stderr, leave=False)
        bar["bar"].n = step
        bar["bar"].refresh()

    return update, lambda: bar["bar"].close() if "bar" in bar else None


T = TypeVar("T")


def _write(output: Any, save: Callable[[], T]) -> T:
    """Run ``save``, which writes ``output``; a path that cannot be written is a one-line error."""
    try:
        return save()
    except (ValueError, OSError) as exc:
        raise ValidationError(f"cannot write {output} ({exc}); give a writable path ending in .png") from None


def _report(result: Any, paths: list[Path]) -> None:
    for path, seed in zip(paths, result.metadata["seeds"]):
        print(f"{path}  seed {seed}")
    if "note" in result.metadata:
        print(f"note: {result.metadata['note']}", file=sys.stderr)
    plan = result.metadata.get("memory_plan", {})
    if plan.get("mode", "none") != "none":
        print(f"memory: {plan['mode']} ({plan['reason']})", file=sys.stderr)
    fast = result.metadata.get("fast", {})
    if fast.get("reason") not in (None, "", "off"):
        print(f"fast: {fast['reason']}", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    update, close = _progress_bar(args.quiet)
    try:
        result = pipe.generate(
            prompt=args.prompt, negative_prompt=args.negative_prompt, model=args.model,
            controls=[parse_control(s) for s in args.control], loras=[parse_lora(s) for s in args.lora],
            ip_adapters=[parse_ip_adapter(s) for s in args.ip_adapter],
            init_image=args.init_image, strength=args.strength, resize_mode=args.resize_mode, mask=args.mask,
            width=args.width,
            height=args.height, steps=args.steps, guidance=args.guidance, scheduler=args.scheduler,
            seed=args.seed, batch=args.batch, add_trigger_words=args.trigger_words, progress=update,
            memory=args.memory, attention=args.attention, vram=args.vram, fast=args.fast, clip_skip=args.clip_skip,
            prompt_syntax="literal" if args.literal_prompt else "a1111", hires=_hires(args))
    finally:
        close()
    _report(result, _write(args.output, lambda: result.save(args.output)))
    return 0


def _hires(args: argparse.Namespace) -> Hires | None:
    """The hires fix from --hires-* flags; any of them turns it on."""
    given = {name: getattr(args, f"hires_{name}") for name in Hires.model_fields}
    return Hires(**{k: v for k, v in given.items() if v is not None}) if any(v is not None for v in given.values()) \
        else None


def cmd_reproduce(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    result = pipe.reproduce(args.image, strict=not args.allow_changed_models, model=args.model)
    restored = result.metadata.get("reproduced_from")
    if restored:
        print(f"made again from {restored['tool']} settings ({restored['note']})", file=sys.stderr)
        print("dropped: " + ("; ".join(restored["dropped"]) or "nothing"), file=sys.stderr)
    output = args.output or Path(args.image).with_name(Path(args.image).stem + "-reproduced.png")
    _report(result, _write(output, lambda: result.save(output)))
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    image = pipe.preprocess(args.plugin, args.image, width=args.width, height=args.height,
                            resize_mode=args.resize_mode, **parse_params(args.param))

    def save() -> None:  # whole or not at all: a full disk leaves no file behind, not an empty one
        from PIL import Image

        from sdcompose.metadata import write_atomic
        output = Path(args.output)
        kind = Image.registered_extensions().get(output.suffix.lower())
        if kind is None:
            raise ValueError(f"unknown image file extension {quote(output.suffix)}")
        buffer = io.BytesIO()
        image.save(buffer, format=kind)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(output, buffer.getvalue())

    _write(args.output, save)
    print(args.output)
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    result = pipe.upscale(args.image, model=args.model, scale=args.scale, tile=args.tile)
    output = args.output or Path(args.image).with_name(Path(args.image).stem + "-upscaled.png")
    path, = _write(output, lambda: result.save(output))
    done = result.metadata["upscale"]
    print(f"{path}  {done['size'][0]}x{done['size'][1]}  ({args.model}, {done['passes']} pass(es) at "
          f"{done['native_scale']}x)")
    if "note" in result.metadata:
        print(f"note: {result.metadata['note']}", file=sys.stderr)
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    """``models scan DIR...``: what indexing the folders would give, read from the file headers only."""
    from sdcompose.pipelines.catalog import Catalog
    if not args.ids:
        raise ValidationError("models scan needs a folder: sdcompose models scan ~/stable-diffusion-webui")
    catalog = Catalog(args.models, folders=[*(args.folder or []), *args.ids])
    for result in catalog.index.scans:
        usable = sum(f.status == "ok" for f in result.found)
        print(f"{result.folder} ({result.tree}): {usable} usable of {len(result.found)} model files")
        for f in sorted(result.found, key=lambda f: (f.status != "ok", f.relative)):
            label = f"{f.id:32} {f.kind:10} {f.family:5}" if f.status == "ok" else f"{'-':32} {'not used':16}"
            print(f"  {label} {f.relative}" + ("" if f.status == "ok" else f"  ({f.status})"))
        for relative, reason in result.skipped:
            print(f"  {'-':32} {'skipped':16} {relative}  ({reason})")
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    """sha256 and size of each file named: what a models.yaml `file:` entry (or a plugin's) needs."""
    from sdcompose.pipelines.weights import sha256
    if not args.ids:
        raise ValidationError("models hash needs one or more files: sdcompose models hash FILE...")
    for name in args.ids:
        path = Path(name)
        if not path.is_file():
            raise ValidationError(f"{path} is not a file; models hash reads weight files (for a folder, hash "
                                  "each file in it)")
        print(f"{sha256(path)}  {path.stat().st_size:>14,} bytes  {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from sdcompose.pipelines.catalog import Catalog
    if args.action == "scan":
        return cmd_scan(args)
    if args.action == "hash":
        return cmd_hash(args)
    catalog = Catalog(args.models, folders=args.folder or None)
    ids = [i for i in catalog.entries if args.kind in (None, catalog.entries[i].kind)]
    if args.action == "list":
        for model_id in ids:
            e = catalog.entries[model_id]
            source = "tiny" if e.tiny else e.repo or e.path or e.file or e.found
            print(f"{model_id:32} {e.kind:10} {e.family or '-':5} {source}")
        return 0
    from sdcompose.pipelines.loader import Loader
    loader, failed = Loader(catalog), 0
    for model_id in args.ids or ids:
        entry = catalog.get(model_id)
        if entry.repo and not args.download:
            if not loader.is_local(entry):
                print(f"{model_id:32} not downloaded ({entry.repo}@{entry.revision[:10]}; --download fetches it)")
                continue
        try:
            hashes = loader.hashes(entry)
            print(f"{model_id:32} ok  {len(hashes)} file(s)")
        except SdcomposeError as exc:
            failed += 1
            print(f"{model_id:32} BAD {exc}")
    return 1 if failed else 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from sdcompose.pipelines.catalog import Catalog
    from sdcompose.pipelines.plugin_models import checker
    from sdcompose.plugins.registry import Registry
    rows = Registry(check=checker(Catalog())).describe_all()
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    for row in rows:
        families = ",".join(row["families"]) or "-"
        line = f"{row['id']:16} {row['kind'] or '?':12} {families:10} {row['status']:10} {row['package']}"
        print(line + (f"  ({row['error']})" if row["error"] else ""))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    return _serve(args, api=False, ui=True)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.ray:
        from sdcompose.raycluster import require_ray
        require_ray()
        from sdcompose.server.rayserve_cli import serve_ray
        return serve_ray(args)
    return _serve(args, api=True, ui=not args.no_ui)


def _serve(args: argparse.Namespace, api: bool, ui: bool) -> int:
    import importlib.util
    if ui and importlib.util.find_spec("gradio") is None:  # the one dependency that only the web UI needs
        raise SdcomposeError("the web UI needs gradio, which is not installed: pip install 'gradio>=5.0,<7'"
                             + (" (or serve the API alone with --no-ui)" if api else ""))
    from sdcompose.server.serve import serve
    return serve(args, api=api, ui=ui)


def cmd_batch(args: argparse.Namespace) -> int:
    from sdcompose.batch.run import run_batch
    if args.workers < 1:
        raise ValidationError(f"--workers must be at least 1, got {args.workers}")
    models = str(Path(args.models).resolve()) if args.models else None
    if args.ray:
        from sdcompose.raycluster import require_ray
        require_ray()
        from sdcompose.batch import ray_workers
        start = lambda n: ray_workers.start_workers(n, args.address, models, args.device, args.dtype,  # noqa: E731
                                                    args.gpus_per_worker, args.cpus_per_worker)
        stop = ray_workers.stop_workers
    else:
        from sdcompose.batch.worker import Worker
        start = lambda n: [Worker(f"local-{i}", models, args.device, args.dtype) for i in range(n)]  # noqa: E731
        stop = lambda pool: None  # noqa: E731
    summary = run_batch(args.jobs, args.out, start, args.workers, args.quiet, stop)
    print(summary.text(Path(args.out)))
    return 1 if summary.failures else 0


def field(name: str) -> Any:
    """A request field's default, from the schema (sdcompose/request.py)."""
    return default(GenerationRequest, name)


def ranged(name: str) -> str:
    low, high = bounds(GenerationRequest, name)
    return f"{low:g} to {high:g} (default {field(name):g})"


class Parser(argparse.ArgumentParser):
    """The command's parsers (every subcommand's too): no abbreviations, so `ui --model` is never taken for
    `--models`, nor a typo for some other option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sdcompose", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sdcompose {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def runtime(p: argparse.ArgumentParser) -> None:
        p.add_argument("--models", help="extra models.yaml overlaying the shipped and user ones")
        p.add_argument("--folder", action="append", metavar="DIR",
                       help="a model folder (AUTOMATIC1111 or ComfyUI tree) indexed in place; repeatable")
        p.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: best available)")
        p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="default: float16 on CUDA")

    g = sub.add_parser("generate", help="make images")
    g.add_argument("prompt_words", nargs="*", help="the prompt (or use --prompt)")
    g.add_argument("-p", "--prompt", default=None)
    g.add_argument("-n", "--negative-prompt", default=field("negative_prompt"))
    g.add_argument("-m", "--model", default=None, help=f"a models.yaml base id (default: $SDCOMPOSE_MODEL, else "
                                                       f"{DEFAULT_MODEL})")
    g.add_argument("--control", action="append", default=[], metavar="ID=IMAGE[:k=v...]",
                   help=f"a ControlNet unit; keys: weight, start, end, model, resize_mode ({'|'.join(RESIZE_MODES)}), "
                        f"control_mode ({'|'.join(CONTROL_MODES)}), preprocessed, or the plugin's params")
    g.add_argument("--lora", action="append", default=[], metavar="ID[:WEIGHT]")
    g.add_argument("--ip-adapter", action="append", default=[], metavar="ID=IMAGE[:k=v...]",
                   help="an image prompt: a models.yaml IP-Adapter and its reference; keys: image (one more "
                        "reference), weight, start, end")
    g.add_argument("--trigger-words", action="store_true", help="add the LoRAs' trigger words to the prompt")
    g.add_argument("--clip-skip", type=int, default=1, help="A1111's clip skip (1: the text encoder's last layer)")
    g.add_argument("--literal-prompt", action="store_true",
                   help="take the prompt as written: no (emphasis:1.2), BREAK or <lora:...> tags (docs/prompts.md)")
    g.add_argument("--init-image", help="img2img source")
    g.add_argument("--strength", type=float, default=field("strength"), help=ranged("strength"))
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default=field("resize_mode"),
                   help="how --init-image (and --mask) is fitted to the size (default: %(default)s)")
    g.add_argument("--mask", help="inpaint mask (white = repaint); needs --init-image")
    g.add_argument("-W", "--width", type=int, default=field("width"), help=ranged("width"))
    g.add_argument("-H", "--height", type=int, default=field("height"), help=ranged("height"))
    g.add_argument("--steps", type=int, default=field("steps"), help=ranged("steps"))
    g.add_argument("--guidance", "--cfg", type=float, default=field("guidance"), help=ranged("guidance"))
    g.add_argument("--scheduler", "--sampler", default=field("scheduler"),
                   help="a sampler id (dpmpp_2m, euler_a, dpmpp_2m_sde_karras, ...) or A1111's name ('DPM++ 2M Karras'); "
                        "see docs/samplers.md")
    g.add_argument("--seed", type=int, default=field("seed"), help="default: a random seed")
    g.add_argument("--batch", type=int, default=field("batch"), help=ranged("batch"))
    g.add_argument("--memory", choices=MEMORY_MODES, default=field("memory"),
                   help="memory mode; auto picks the fastest that fits --vram (docs/memory.md)")
    g.add_argument("--vram", help="memory budget for --memory auto, e.g. 4GB (default: what the card has free)")
    g.add_argument("--attention", choices=ATTENTION_BACKENDS, default=field("attention"), help="attention backend (auto: sdpa)")
    g.add_argument("--fast", action="store_true", help="compile and replay the UNet/ControlNets as CUDA graphs")
    hr = g.add_argument_group("hires fix", "a second pass at a larger size (any of these turns it on)")
    hr.add_argument("--hires-scale", type=float, help=f"size of pass 2 over pass 1 (default {default(Hires, 'scale')})")
    hr.add_argument("--hires-upscaler", help="lanczos (default) or a models.yaml upscaler id")
    hr.add_argument("--hires-steps", type=int, help="pass-2 steps (default: --steps)")
    hr.add_argument("--hires-denoise", type=float, help=f"pass-2 strength (default {default(Hires, 'denoise')})")
    g.add_argument("-o", "--output", default="out.png")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    runtime(g)
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("reproduce", help="make an sdcompose PNG again from its metadata, or an A1111 image from "
                                         "its parameters (best effort)")
    r.add_argument("image")
    r.add_argument("--model", help="base model for an A1111 image (default: found by its Model hash or name)")
    r.add_argument("-o", "--output")
    r.add_argument("--allow-changed-models", action="store_true", help="run even if model files changed")
    runtime(r)
    r.set_defaults(func=cmd_reproduce)

    pp = sub.add_parser("preprocess", help="run a conditioner alone and save its control map")
    pp.add_argument("plugin")
    pp.add_argument("image")
    pp.add_argument("-o", "--output", required=True)
    pp.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    pp.add_argument("-W", "--width", type=int, help="size the map to this width (alone: the height follows)")
    pp.add_argument("-H", "--height", type=int)
    pp.add_argument("--resize-mode", choices=RESIZE_MODES, default=default(Control, "resize_mode"),
                    help="how the map meets -W x -H when both are given")
    runtime(pp)
    pp.set_defaults(func=cmd_preprocess)

    up = sub.add_parser("upscale", help="enlarge an image with an upscaler model (ESRGAN and kin), tile by tile")
    up.add_argument("image")
    up.add_argument("-m", "--model", required=True, help="a models.yaml upscaler id")
    up.add_argument("--scale", type=float, help="default: the model's own (2 or 4)")
    up.add_argument("--tile", type=int, default=256, help="tile size in pixels (memory grows with its square)")
    up.add_argument("-o", "--output", help="default: IMAGE-upscaled.png")
    runtime(up)
    up.set_defaults(func=cmd_upscale)

    m = sub.add_parser("models", help="the models.yaml catalogue")
    m.add_argument("action", choices=("list", "check", "scan", "hash"))
    m.add_argument("ids", nargs="*", help="check only these; scan: the folders to preview; hash: the files")
    m.add_argument("--kind", choices=("base", "controlnet", "lora", "annotator", "embedding", "upscaler", "ip_adapter",
                                      "image_encoder"))
    m.add_argument("--models", help="extra models.yaml")
    m.add_argument("--folder", action="append", metavar="DIR", help="a model folder indexed in place; repeatable")
    m.add_argument("--download", action="store_true", help="check: download pinned hub models that are missing")
    m.set_defaults(func=cmd_models)

    pl = sub.add_parser("plugins", help="discovered plugins")
    pl.add_argument("action", choices=("list",))
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)

    b = sub.add_parser("batch", help="make the images of a JSON-lines file of requests, resumably")
    b.add_argument("jobs", help="one request per line in the request's JSON form, with an optional \"id\"")
    b.add_argument("--out", required=True, help="folder for <id>.png and failures.jsonl; a rerun skips finished lines")
    b.add_argument("--workers", type=int, default=1, help="pipelines working at once (Ray actors with --ray)")
    b.add_argument("--ray", action="store_true", help="spread the lines over Ray actors (pip install 'sdcompose[ray]')")
    b.add_argument("--address", help="with --ray: the cluster (auto, HOST:PORT, ray://HOST:PORT); default: start a "
                                     "local Ray")
    b.add_argument("--gpus-per-worker", type=float, default=0, help="with --ray: GPUs each actor reserves")
    b.add_argument("--cpus-per-worker", type=float, default=1, help="with --ray: CPUs each actor reserves")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    runtime(b)
    b.set_defaults(func=cmd_batch)

    def serving(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=7860)
        p.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (needs --auth or --insecure-no-auth)")
        p.add_argument("--auth", help="user:password, or @FILE with one user:password per line (kept out of ps)")
        p.add_argument("--auth-token-file", metavar="FILE", help="bearer tokens, one a line (16+ characters each)")
        p.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback bind with no password")
        p.add_argument("--outputs", metavar="DIR", help="the web UI keeps every image here "
                                                         "(default: $SDCOMPOSE_HOME/outputs)")
        p.add_argument("--no-save", action="store_true", help="the web UI keeps images only for the browser session")
        p.add_argument("-m", "--model", help="the base model the page starts with (default: $SDCOMPOSE_MODEL, else "
                                             "the first one downloaded); serve: also the AUTOMATIC1111 API's "
                                             "checkpoint until a client sets one")
        runtime(p)

    u = sub.add_parser("ui", help="serve the web UI (127.0.0.1:7860)")
    serving(u)
    u.set_defaults(func=cmd_ui, max_queue=64, cors_allow_origin=[])

    s = sub.add_parser("serve", help="serve the HTTP API (/v1, /sdapi/v1) and the web UI (127.0.0.1:7860)")
    serving(s)
    s.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests waiting at most; more answer 429 with Retry-After (default 64)")
    s.add_argument("--cors-allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. https://app.example) call the API; off by default")
    s.add_argument("--no-ui", action="store_true", help="serve the API alone")
    r = s.add_argument_group("Ray Serve (pip install 'sdcompose[ray]'; docs/scale-out.md)")
    r.add_argument("--ray", action="store_true", help="serve the API on Ray Serve, routed by base model")
    r.add_argument("--address", help="the cluster (auto, HOST:PORT, ray://HOST:PORT); default: a new local Ray")
    r.add_argument("--replicas", type=int, help="generator replicas, one Pipeline each (default 1)")
    r.add_argument("--autoscale", metavar="MIN:MAX", help="autoscale the generator replicas instead")
    r.add_argument("--gpus-per-replica", type=float, default=0, help="GPUs each replica reserves (default 0)")
    r.add_argument("--cpus-per-replica", type=float, default=1, help="CPUs each replica reserves (default 1)")
    r.add_argument("--models-per-replica", type=int, default=2, metavar="K", help="bases a replica keeps (default 2)")
    r.add_argument("--write-config", metavar="serve.yaml", help="write the Ray Serve config for `serve deploy`, exit")
    s.set_defaults(func=cmd_serve)
    return parser


def _version() -> str:
    from sdcompose import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "prompt_words", None) and args.prompt is None:
        args.prompt = " ".join(args.prompt_words)
    if getattr(args, "command", None) == "generate" and args.prompt is None:
        args.prompt = ""
    try:
        return args.func(args)
    except SdcomposeError as exc:
        if Settings.from_env().debug:
            raise
        print(f"sdcompose: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdcompose: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
