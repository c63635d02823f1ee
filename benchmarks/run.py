"""sdcompose next to plain diffusers, in one process, on the same parts: s/call, ms/step, peak memory.

    python benchmarks/run.py --smoke                    CPU, tiny models, seconds (CI runs this)
    python benchmarks/run.py --out DIR [--budget S]     CUDA: full-size SD1.5 (then SDXL) parts, random weights
    python benchmarks/run.py --dry-run                  the CUDA sections on CPU at 64x64: checks this script

Plain diffusers runs the very modules sdcompose has loaded (``Pipeline.diffusers_pipeline``), built
into the diffusers pipeline class of the composition, with diffusers' own calls for each memory mode.
Writes results.json and results.md to --out (default $OUT, else a temporary folder); prints the table.
Sections run in order of importance and are skipped, saying so, once --budget seconds are spent.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

import measure
import parts
import sdcompose
from sdcompose.errors import describe
from sdcompose.metadata import library_versions, read_png
from sdcompose.pipelines import memory
from sdcompose.pipelines.catalog import home

PROMPT = "a photo of a cat"
HERE = Path(__file__).resolve().parent


@dataclass
class Case:
    name: str
    controls: int = 1
    loras: int = 0
    batch: int = 1
    size: int = 512
    steps: int = 20
    memory: str = "auto"
    attention: str = "auto"
    vram: str | None = None
    cap_gb: float | None = None  # torch.cuda.set_per_process_memory_fraction, for sdcompose's run
    plain: str | None = ""  # how plain diffusers runs it ("" as is; a mode; None: not run)
    runs: int = 3


class Bench:
    def __init__(self, overlay: Path | None, ids: dict[str, Any], device: str, dtype: torch.dtype) -> None:
        self.pipe = sdcompose.Pipeline(models=str(overlay) if overlay else None, device=device, dtype=dtype)
        self.ids, self.device = ids, device
        self._maps: dict[int, Image.Image] = {}

    def control_map(self, size: int) -> Image.Image:
        if size not in self._maps:
            noise = np.random.default_rng(size).random((size, size, 3))
            self._maps[size] = Image.fromarray((noise * 255).astype(np.uint8))
        return self._maps[size]

    def controls(self, case: Case) -> list[sdcompose.Control]:
        return [sdcompose.Control("canny", image=self.control_map(case.size), preprocessed=True, model=cn,
                                  resize_mode="just_resize") for cn in self.ids["cn"][:case.controls]]

    def generate(self, case: Case, steps: int, tick=None, **extra: Any) -> sdcompose.Result:
        return self.pipe.generate(PROMPT, model=self.ids["base"], controls=self.controls(case),
                                  loras=[sdcompose.Lora(i, 0.5) for i in self.ids["lora"][:case.loras]],
                                  width=case.size, height=case.size, steps=steps, guidance=7.5, seed=0,
                                  batch=case.batch, memory=case.memory, attention=case.attention, vram=case.vram,
                                  progress=(lambda _step, _total: tick()) if tick else None, **extra)

    # ---- sdcompose -----------------------------------------------------------------------------
    def ours(self, case: Case) -> dict[str, Any]:
        capped = case.cap_gb is not None and self.device.startswith("cuda")
        if capped:
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(torch.device(self.device)).total_memory
            torch.cuda.set_per_process_memory_fraction(case.cap_gb * 2**30 / total)
        try:
            row = measure.timed(lambda tick: self.generate(case, case.steps if tick else 2, tick), case.runs,
                                self.device)
        finally:
            if capped:
                torch.cuda.set_per_process_memory_fraction(1.0)
        meta = row.pop("output").metadata
        return {**row, "plan": meta["memory_plan"]["mode"], "plan_reason": meta["memory_plan"]["reason"],
                "estimate_gb": meta["memory_plan"]["estimate_gb"], "attention": meta["attention"]["backend"],
                "vae_decode": meta["vae_decode"]}

    # ---- plain diffusers -----------------------------------------------------------------------
    def plain(self, case: Case) -> dict[str, Any]:
        from diffusers import DPMSolverMultistepScheduler
        if case.plain == "sequential_offload" and not self.device.startswith("cuda"):  # its hooks then break the modules
            raise RuntimeError("diffusers' sequential offload needs an execution device other than the CPU")
        controls = self.controls(case)
        ref = self.pipe.diffusers_pipeline(self.ids["base"], controls)  # the plain base: fused LoRAs come off
        plain = type(ref)(**ref.components)
        plain.scheduler = DPMSolverMultistepScheduler.from_config(ref.scheduler.config, algorithm_type="dpmsolver++",
                                                                  solver_order=2)
        plain.set_progress_bar_config(disable=True)
        names = self._setup(plain, case)
        kwargs = dict(prompt=PROMPT, height=case.size, width=case.size, guidance_scale=7.5,
                      num_images_per_prompt=case.batch, output_type="np")
        if controls:
            maps = [self.control_map(case.size)] * len(controls)
            kwargs["image"] = maps[0] if len(maps) == 1 else maps

        def call(tick):
            step = (lambda _p, _i, _t, tensors: (tick(), tensors)[1]) if tick else None
            return plain(**kwargs, num_inference_steps=case.steps if tick else 2, callback_on_step_end=step,
                         generator=[torch.Generator("cpu").manual_seed(i) for i in range(case.batch)])

        try:
            row = measure.timed(call, case.runs, self.device)
        finally:
            self._reset(plain, names)
        row.pop("output")
        return row

    def _setup(self, plain: Any, case: Case) -> list[str]:
        mode, device = case.plain, torch.device(self.device)
        if mode == "model_offload":
            plain.enable_model_cpu_offload(device=device)
        elif mode == "sequential_offload":
            plain.enable_sequential_cpu_offload(device=device)
        elif mode == "group_offload":
            plain.enable_group_offload(onload_device=device, offload_type="block_level", num_blocks_per_group=1,
                                       use_stream=device.type == "cuda")
        elif mode in ("vae_tiling", "vae_slicing"):
            getattr(plain.vae, f"enable_{mode[4:]}")()
        elif mode == "sliced":
            plain.enable_attention_slicing()
        elif mode.startswith("lora"):
            names = [f"plain{i}" for i in range(case.loras)]
            for name, lora_id in zip(names, self.ids["lora"]):
                plain.load_lora_weights(str(self.pipe.loader.path(self.pipe.catalog.get(lora_id))), adapter_name=name)
            plain.set_adapters(names, adapter_weights=[0.5] * len(names))
            if mode == "lora_fused":
                plain.fuse_lora(components=["unet"], adapter_names=names)
            return names
        return []

    def _reset(self, plain: Any, names: list[str]) -> None:
        """Undo plain diffusers' hooks, LoRAs and settings on the shared modules."""
        from diffusers.models.attention_processor import AttnProcessor2_0
        if names:
            plain.unfuse_lora(components=["unet"])
            plain.delete_adapters(names)
        cached = self.pipe.cache.modules()
        release = memory.Placement()
        for module in cached:
            release.release(module)
            if hasattr(module, "set_attn_processor"):
                module.set_attn_processor(AttnProcessor2_0())
        plain.vae.disable_tiling()
        plain.vae.disable_slicing()
        self.pipe.cache.placement.forget({str(i): m for i, m in enumerate(cached)})

    def row(self, case: Case) -> dict[str, Any]:
        row: dict[str, Any] = {"case": case.name, "setting": asdict(case)}
        for side, run in (("sdcompose", self.ours), ("diffusers", self.plain)):
            if side == "diffusers" and case.plain is None:
                continue
            row[side] = guarded(lambda: run(case))
            torch.cuda.empty_cache() if self.device.startswith("cuda") else None
        print(json.dumps({k: v for k, v in row.items() if k != "setting"}), flush=True)
        return row


def guarded(section: Callable[[], Any]) -> Any:
    """What ``section`` returns, or its error: one failing case or section must not lose the others."""
    try:
        return section()
    except Exception as exc:
        return {"error": describe(exc)}


# ---- sections ------------------------------------------------------------------------------------
SMOKE = [Case("txt2img", controls=0, size=64, steps=3, runs=1), Case("+1 ControlNet", size=64, steps=3, runs=1),
         Case("+1 ControlNet + LoRA (diffusers: unfused)", loras=1, size=64, steps=3, runs=1, plain="lora_unfused")]
# GPU sections, most important first (the targets, then the CLI check, fast mode, SDXL, the rest)
TARGETS = [Case("+1 ControlNet"), Case("+1 ControlNet + 3 LoRAs (sdcompose fuses; diffusers unfused)", loras=3,
                                       plain="lora_unfused"),
           Case("+1 ControlNet, capped at 4 GB (auto)", vram="4GB", cap_gb=4, plain=None, runs=2),
           Case("+1 ControlNet, capped at 2 GB (auto)", vram="2GB", cap_gb=2, plain=None, runs=2)]
MORE = [Case("txt2img", controls=0), Case("+2 ControlNets", controls=2),
        Case("+1 ControlNet, batch 4", batch=4, runs=2), Case("+1 ControlNet, 1024x1024", size=1024, runs=2),
        Case("+1 ControlNet, model offload", memory="model_offload", plain="model_offload", runs=2),
        Case("+1 ControlNet, group offload (streams)", memory="group_offload", plain="group_offload", runs=2),
        Case("+1 ControlNet, 1024x1024, VAE tiling", size=1024, memory="vae_tiling", plain="vae_tiling", runs=1),
        Case("+1 ControlNet + 3 LoRAs (diffusers fused too)", loras=3, plain="lora_fused", runs=2),
        Case("+1 ControlNet, batch 4, VAE slicing", batch=4, memory="vae_slicing", plain="vae_slicing", runs=1),
        Case("+1 ControlNet, sequential offload (4 steps)", steps=4, memory="sequential_offload",
             plain="sequential_offload", runs=1),
        Case("+1 ControlNet, sliced attention", attention="sliced", plain="sliced", runs=2)]
SDXL = [Case("SDXL + 1 ControlNet, 1024x1024, capped at 8 GB (auto)", size=1024, vram="8GB", cap_gb=8, plain=None,
             runs=1)]


def fast_mode(overlay: Path, ids: dict[str, Any], seconds: float, device: str, case: Case) -> dict[str, Any]:
    """Fast mode in fresh processes: cold (empty compile cache), then warm; within ``seconds``."""
    deadline = time.monotonic() + seconds
    cache = home() / "compile"
    subprocess.run(["rm", "-rf", str(cache)], check=False)
    out = {}
    for label in ("cold", "warm"):
        start, limit = time.perf_counter(), max(30.0, deadline - time.monotonic())
        try:
            proc = subprocess.run([sys.executable, str(HERE / "fast_start.py"), "--models", str(overlay),
                                   "--ids", json.dumps(ids), "--device", device, "--size", str(case.size),
                                   "--steps", str(case.steps)] + (["--full"] if label == "cold" else []),
                                  capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:  # the sections after this one still run
            out[label] = {"error": f"not done within the {limit:.0f} s left"}
        else:
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            out[label] = json.loads(lines[-1]) if lines else {"error": proc.stderr.strip().splitlines()[-3:]}
        out[label]["process_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps({"fast": label, **out[label]}), flush=True)
    return out


def cli_check(bench: Bench, overlay: Path, work: Path, case: Case) -> dict[str, Any]:
    """`sdcompose generate ... --vram 2GB` against the same image made without a cap."""
    default = bench.generate(case, case.steps)
    control = work / "control.png"
    bench.control_map(case.size).save(control)
    target = work / "capped.png"
    cmd = [sys.executable, "-m", "sdcompose.cli", "generate", PROMPT, "-m", bench.ids["base"], "--models", str(overlay),
           "--control", f"canny={control}:preprocessed=true:model={bench.ids['cn'][0]}:resize_mode=just_resize",
           "-W", str(case.size), "-H", str(case.size), "--steps", str(case.steps), "--guidance", "7.5", "--seed", "0",
           "--vram", "2GB",
           "-o", str(target), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode:
        return {"command": " ".join(cmd), "error": proc.stderr.strip()[-500:]}
    meta, _ = read_png(target)
    capped = np.asarray(Image.open(target).convert("RGB"), dtype=np.int16)
    plain = np.asarray(default.images[0], dtype=np.int16)
    return {"command": "sdcompose generate ... --vram 2GB", "plan": meta["memory_plan"],
            "max_abs_diff_8bit": int(np.abs(capped - plain).max()),
            "mean_abs_diff_8bit": round(float(np.abs(capped - plain).mean()), 4)}


def targets(rows: list[dict[str, Any]], fast: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, from this run's numbers (None where unmeasured)."""
    by = {r["case"]: r for r in rows}
    get = (lambda case, side, key: (by.get(case, {}).get(side) or {}).get(key))
    cn1 = "+1 ControlNet"
    out = {"default s/call vs diffusers (<= 1.02)": measure.ratio(get(cn1, "sdcompose", "s_per_call"),
                                                                   get(cn1, "diffusers", "s_per_call"))}
    cold = fast.get("cold", {})  # the process that also timed plain diffusers
    if cold.get("fast_ms_per_step"):
        out["fast ms/step"] = cold["fast_ms_per_step"]
        out["fast step rate vs diffusers (>= 3)"] = measure.ratio(cold.get("plain_ms_per_step"),
                                                                  cold["fast_ms_per_step"])
        out["fast vs default max abs pixel diff"] = cold.get("max_abs_diff")
    out["3 LoRAs fused ms/step vs no LoRA (<= 1.05)"] = measure.ratio(
        get("+1 ControlNet + 3 LoRAs (sdcompose fuses; diffusers unfused)", "sdcompose", "ms_per_step"),
        get(cn1, "sdcompose", "ms_per_step"))
    for gb, limit in ((4, 1.3), (2, 3)):
        out[f"capped {gb} GB s/call vs uncapped (<= {limit})"] = measure.ratio(
            get(f"+1 ControlNet, capped at {gb} GB (auto)", "sdcompose", "s_per_call"),
            get(cn1, "sdcompose", "s_per_call"))
    out["SDXL + ControlNet 1024 peak GB (< 8)"] = get(SDXL[0].name, "sdcompose", "peak_gb")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, a few seconds")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default: a new temp folder)")
    parser.add_argument("--budget", type=float, default=330, help="seconds for the GPU sections (default 330)")
    parser.add_argument("--no-sdxl", action="store_true")
    parser.add_argument("--dry-run", action="store_true",
                        help="the CUDA sections on CPU, fp32, 64x64, 3 steps, one timed call: checks this script and "
                             "its parts before GPU time is spent; measures nothing (give it a --budget of ~3000)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="sdcompose-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    device = "cuda" if torch.cuda.is_available() and not (args.smoke or args.dry_run) else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    shape = (lambda todo: [replace(c, size=64, steps=3, runs=1) for c in todo] if args.dry_run else todo)
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "versions": library_versions(), "smoke": args.smoke, "dry_run": args.dry_run, "rows": [], "skipped": []}
    if device == "cpu" and not (args.smoke or args.dry_run):
        print("no CUDA device: running the smoke benchmark", file=sys.stderr)
    save = lambda: (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    left = (lambda: args.budget - (time.monotonic() - start))

    if device == "cpu" and not args.dry_run:
        torch.set_num_threads(1)  # tiny models: one thread is the fastest and steadiest on a shared CPU
        bench = Bench(None, {"base": "tiny-sd15", "cn": ["tiny-controlnet-canny-sd15"], "lora": ["tiny-lora-sd15"]},
                      "cpu", torch.float32)
        results["rows"] = [bench.row(case) for case in SMOKE]
    else:
        root = home() / "models"
        entries = parts.build(root, "sd15", device, dtype, controlnets=2, loras=3)
        overlay = parts.overlay(home() / "bench-models.yaml", entries)
        ids = {"base": "bench-sd15", "cn": ["bench-sd15-cn0", "bench-sd15-cn1"],
               "lora": [f"bench-sd15-lora{i}" for i in range(3)]}

        def cases(bench: Bench, todo: list[Case], need: float) -> None:
            for case in shape(todo):
                if left() < need:
                    results["skipped"].append(case.name)
                    continue
                results["rows"].append(bench.row(case))
                save()

        bench = Bench(overlay, ids, device, dtype)
        cases(bench, TARGETS, 20)
        cli = shape([Case("cli")])[0]
        results["cli_vram_2gb"] = guarded(lambda: cli_check(bench, overlay, Path(tempfile.mkdtemp()), cli)) \
            if left() > 40 else "skipped"
        save()
        fast = shape([Case("fast")])[0]
        results["fast"] = guarded(lambda: fast_mode(overlay, ids, left(), device, fast)) if left() > 150 \
            else {"skipped": "time"}
        save()
        del bench  # SDXL's 8 GB cap counts every module this process holds on the GPU
        torch.cuda.empty_cache()
        built = guarded(lambda: parts.build(root, "sdxl", device, dtype, controlnets=1)) \
            if not args.no_sdxl and left() > 120 else None
        if built and "error" in built:
            results["sdxl_error"] = built["error"]
        elif built:
            entries.update(built)
            xl = Bench(parts.overlay(overlay, entries), {"base": "bench-sdxl", "cn": ["bench-sdxl-cn0"], "lora": []},
                       device, dtype)
            cases(xl, SDXL, 0)
            del xl
            torch.cuda.empty_cache()
        else:
            results["skipped"] += [case.name for case in SDXL]
        cases(Bench(overlay, ids, device, dtype), MORE, 25)
        results["targets"] = targets(results["rows"], results.get("fast", {}))
    results["elapsed_s"] = round(time.monotonic() - start, 1)
    save()
    text = measure.table(results["rows"])
    (out / "results.md").write_text(f"{results['device']}, {results['date']}, torch {results['versions']['torch']}, "
                                    f"diffusers {results['versions']['diffusers']}\n\n{text}\n")
    print(text)
    cn1 = next(r for r in results["rows"] if r["case"] == "+1 ControlNet")
    overhead = measure.ratio(cn1.get("sdcompose", {}).get("s_per_call"), cn1.get("diffusers", {}).get("s_per_call"))
    print(f"overhead ratio (sdcompose / plain diffusers, s per call, +1 ControlNet): {overhead}")
    if results.get("targets"):
        print(json.dumps(results["targets"], indent=1))
    if results["skipped"]:
        print(f"skipped for time: {', '.join(results['skipped'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
