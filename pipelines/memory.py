"""Memory plans: estimate a composition's peak device memory, pick the fastest plan that fits, apply it.

Modes (``memory=``), fastest first:
- ``none``: every module on the device.
- ``vae_slicing``: the VAE decodes a batch one image at a time.
- ``vae_tiling``: the VAE decodes in overlapping tiles of its own ``sample_size`` (blended at the seams,
  so pixels differ slightly from an untiled decode).
- ``model_offload``: whole models move to the device when they run (diffusers' model CPU offload).
- ``group_offload``: blocks of each model move to the device when they run, the next block copied on a
  side CUDA stream while the current one computes (diffusers' ``enable_group_offload``).
- ``sequential_offload``: single layers move when they run; smallest and slowest.
- ``auto``: the first of the above (with VAE slicing or tiling added where that is enough) whose
  estimated peak fits 90% of the budget: ``vram`` if given, else what the card has free plus what
  this process already holds. On a CPU or MPS device there is nothing to plan.

The estimate (docs/memory.md) is the largest, over the phases text / denoise / decode, of the bytes
of the weights on the device in that phase plus that phase's activations, plus a fixed allowance.
Activation terms are calibrated on plain-diffusers peaks measured on an H200 (``../shared/anchors.md``).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from sdcompose.errors import ValidationError
from sdcompose.pipelines import families
from sdcompose.request import MEMORY_MODES as CHOICES

PLACEMENTS = ("none", "model_offload", "group_offload", "sequential_offload")  # where weights live
HEADROOM = 0.9  # a plan must fit in this share of the budget (allocator rounding and fragmentation)

GIB = 2**30
REF_PIXELS = 512 * 512
# Calibration (GiB at 2-byte activations, per 512x512 image; see docs/memory.md for the fit):
FIXED = 0.1714 * GIB  # workspaces, embeddings, latents: present in every phase
DECODE = 0.4750 * GIB  # VAE decoder activations, linear in pixels
UNET = 0.1467 * GIB  # UNet activations of one denoising step with classifier-free guidance (batch 2)
CONTROLNET = 0.0250 * GIB  # one ControlNet's residuals (+ its running sum), with guidance


@dataclass(frozen=True)
class Workload:
    """What a request puts on the device: module sizes and the shape of the work."""

    weights: dict[str, int]  # bytes per module name (unet, vae, text_encoder, controlnet:0, adapter:0, ...)
    groups: dict[str, int]  # bytes resident under block-level group offload (unmatched + two largest blocks)
    leaves: dict[str, int]  # largest single layer, in bytes (sequential offload)
    width: int
    height: int
    batch: int
    cfg: bool = True
    act_bytes: int = 2  # bytes per activation element (dtype of the run)
    vae_upcast: bool = False  # the VAE is cast to float32 to decode (SDXL's ``force_upcast``)
    vae_tile: int = 512  # tile size of VAE tiling, in pixels
    calibration: Any = None  # the family's activation terms, GiB per 512x512 image (None: SD1.5's, the constants)
    denoiser: str = "unet"  # the family's denoising module (``Family.denoiser``): it runs in the denoise phase

    @property
    def controlnets(self) -> int:
        return sum(1 for name in self.weights if name.startswith("controlnet"))


@dataclass(frozen=True)
class MemoryPlan:
    placement: str = "none"  # one of PLACEMENTS
    vae_slicing: bool = False
    vae_tiling: bool = False
    estimate: int | None = None  # bytes
    budget: int | None = None  # bytes
    reason: str = ""

    @property
    def mode(self) -> str:
        parts = [self.placement] if self.placement != "none" else []
        parts += [name for name, on in (("vae_slicing", self.vae_slicing), ("vae_tiling", self.vae_tiling)) if on]
        return "+".join(parts) or "none"

    def describe(self) -> dict[str, Any]:
        gb = (lambda v: None if v is None else round(v / GIB, 2))
        return {"mode": self.mode, "estimate_gb": gb(self.estimate), "budget_gb": gb(self.budget),
                "reason": self.reason}


# ---- sizes -------------------------------------------------------------------------------------
def _bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _group_bytes(module: Any) -> int:
    """Bytes on the device under block-level group offload: the module's own layers plus two blocks in flight."""
    import torch
    blocks, unmatched = [], 0
    named_blocks = set(getattr(module, "_group_offload_block_modules", None) or ())
    for name, child in module.named_children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            blocks += [_bytes(block) for block in child]
        elif name in named_blocks:
            blocks.append(_bytes(child))
        else:
            unmatched += _bytes(child)
    unmatched += sum(t.numel() * t.element_size() for t in (*module.parameters(recurse=False),
                                                             *module.buffers(recurse=False)))
    return unmatched + sum(sorted(blocks)[-2:])


def _largest_leaf(module: Any) -> int:
    return max((_bytes(m) for m in module.modules() if next(m.children(), None) is None), default=0)


_sizes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (bytes, group bytes, largest leaf)


def sizes(module: Any) -> tuple[int, int, int]:
    """A module's bytes, bytes under group offload and largest layer, measured once (LoRA layers come later,
    and are small next to the model)."""
    if module not in _sizes:
        _sizes[module] = (_bytes(module), _group_bytes(module), _largest_leaf(module))
    return _sizes[module]


def workload(models: dict[str, Any], width: int, height: int, batch: int, guidance: float, dtype: Any,
             family: str) -> Workload:
    """Measure the modules of a composition (on any device, meta included) for :func:`estimate`."""
    weights, groups, leaves, seen = {}, {}, {}, set()
    for name, module in models.items():
        if id(module) in seen:  # the same ControlNet twice is loaded once
            continue
        seen.add(id(module))
        weights[name], groups[name], leaves[name] = sizes(module)
    vae = models.get("vae")
    config = getattr(vae, "config", None)
    spec = families.get(family)
    upcast = bool(spec.vae_may_upcast and getattr(config, "force_upcast", False) and getattr(dtype, "itemsize", 4) == 2)
    return Workload(weights, groups, leaves, width, height, batch, cfg=guidance > 1, calibration=spec.memory,
                    act_bytes=getattr(dtype, "itemsize", 4), vae_upcast=upcast,
                    vae_tile=int(getattr(config, "sample_size", 512) or 512), denoiser=spec.denoiser)


# ---- the estimate ------------------------------------------------------------------------------
def _phase(name: str, denoiser: str = "unet") -> str:
    if name.startswith("text_encoder"):
        return "text"
    if name == "vae":
        return "decode"
    return "denoise" if name.startswith((denoiser, "controlnet", "adapter")) else "all"  # adapter: a T2I-Adapter


def activations(w: Workload, vae_slicing: bool = False, vae_tiling: bool = False) -> dict[str, float]:
    """Activation bytes of the denoise and decode phases."""
    scale = w.width * w.height / REF_PIXELS
    act = w.act_bytes / 2
    unet, controlnet, decode_bytes = (UNET, CONTROLNET, DECODE) if w.calibration is None else \
        (w.calibration["unet"] * GIB, w.calibration["controlnet"] * GIB, w.calibration["decode"] * GIB)
    denoise = (unet + controlnet * w.controlnets) * w.batch * scale * act * (1 if w.cfg else 0.5)
    images = 1 if vae_slicing else w.batch
    width, height = w.width, w.height
    if vae_tiling and max(width, height) > w.vae_tile:
        width, height = min(width, w.vae_tile), min(height, w.vae_tile)
    vae_act = 4 if w.vae_upcast else w.act_bytes
    tokens = (width // 8) * (height // 8)  # the VAE mid-block attention materialises tokens x tokens scores
    decode = images * (decode_bytes * width * height / REF_PIXELS * vae_act / 2 + tokens * tokens * vae_act)
    return {"text": 0.0, "denoise": denoise, "decode": decode}


def estimate(w: Workload, plan: MemoryPlan) -> int:
    """Peak device bytes of ``w`` under ``plan``."""
    acts = activations(w, plan.vae_slicing, plan.vae_tiling)
    peak = 0.0
    for phase in ("text", "denoise", "decode"):
        resident, streamed = 0.0, 0.0
        for name, size in w.weights.items():
            if name == "vae" and phase == "decode" and w.vae_upcast:
                size *= 2
            where = _phase(name, w.denoiser)
            if plan.placement == "none" or where == "all" or (plan.placement == "group_offload" and name == "vae"):
                resident += size  # group offload keeps the (small) VAE on the device: see Placement.attach
            elif plan.placement == "model_offload":
                # diffusers moves each model in when it runs; ControlNets stay until the call ends
                kept = where == "denoise" and name.startswith("controlnet") and phase == "decode"
                resident += size if where == phase or kept else 0
            elif where == phase:  # models of a phase run one after another
                streamed = max(streamed, w.groups[name] if plan.placement == "group_offload" else 2 * w.leaves[name])
        peak = max(peak, resident + streamed + acts[phase])
    return int(peak + FIXED)


# ---- choosing ----------------------------------------------------------------------------------
def budget(device: str, vram: int | None) -> int | None:
    """Bytes the plan may use: ``vram`` if given, else the card's free memory plus what this process holds."""
    if vram is not None:
        return vram
    if not device.startswith("cuda"):
        return None
    import torch
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return free + torch.cuda.memory_reserved(torch.device(device))


def _candidates(w: Workload):
    vae_options = [(False, False)]
    if w.batch > 1:
        vae_options.append((True, False))
    if max(w.width, w.height) > w.vae_tile:
        vae_options.append((w.batch > 1, True))
    for placement in PLACEMENTS:
        for slicing, tiling in vae_options:
            yield MemoryPlan(placement, slicing, tiling)


def choose(mode: str, w: Workload, device: str, vram: int | None) -> MemoryPlan:
    """The plan for ``mode``; for ``auto`` the fastest that fits, with its reason."""
    if mode not in CHOICES:
        raise ValidationError(f"memory {mode!r} is not one of {', '.join(CHOICES)}")
    room = budget(device, vram)
    if mode != "auto":
        plan = MemoryPlan(placement=mode if mode in PLACEMENTS else "none", vae_slicing=mode == "vae_slicing",
                          vae_tiling=mode == "vae_tiling")
        return _with(plan, estimate(w, plan), room, "as asked")
    if not device.startswith("cuda"):
        return MemoryPlan(reason=f"{device.split(':')[0]}: no memory plan")
    plans = [_with(p, estimate(w, p), room, "") for p in _candidates(w)]
    for plan in plans:
        if plan.estimate <= HEADROOM * room:
            why = "everything fits" if plan.mode == "none" else \
                f"'{plans[0].mode}' would need {plans[0].estimate / GIB:.2f} GB"
            return _with(plan, plan.estimate, room, f"auto: fastest plan that fits {room / GIB:.2f} GB ({why})")
    smallest = min(plans, key=lambda p: p.estimate)
    return _with(smallest, smallest.estimate, room, f"auto: nothing fits {room / GIB:.2f} GB; trying the smallest "
                                                    "plan, which may run out of memory")


def _with(plan: MemoryPlan, estimate_: int, room: int | None, reason: str) -> MemoryPlan:
    return MemoryPlan(plan.placement, plan.vae_slicing, plan.vae_tiling, estimate_, room, reason)


# ---- applying ----------------------------------------------------------------------------------
class Placement:
    """Moves cached modules between requests: hooks of the last plan off, this plan's on.

    ``prepare`` runs before adapters touch the weights (every weight real, in memory); ``attach``
    after them, adding the offload hooks of this plan.
    """

    def __init__(self) -> None:
        self._state: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> placement or "cpu"

    def prepare(self, models: dict[str, Any], plan: MemoryPlan, device: str, others: list[Any] = ()) -> None:
        modules = list({id(m): m for m in models.values()}.values())
        for module in modules:
            if not (plan.placement == "none" and self._on_device(module, device)):
                self.release(module)
        placed = [m for m in others if self._state.get(m) == "none"]
        if placed and plan.estimate is not None and plan.budget is not None and \
                plan.estimate + sum(sizes(m)[0] for m in placed) > HEADROOM * plan.budget:
            for module in placed:  # cached modules of other compositions make room
                self.release(module)
                module.to("cpu")
                self._state[module] = "cpu"
        if plan.placement == "none":
            for module in modules:
                if self._state.get(module) != "none":
                    module.to(device)
                    self._state[module] = "none"
        vae = models.get("vae")
        if vae is not None:
            vae.enable_slicing() if plan.vae_slicing else vae.disable_slicing()
            vae.enable_tiling() if plan.vae_tiling else vae.disable_tiling()

    def attach(self, pipe: Any, models: dict[str, Any], plan: MemoryPlan, device: str) -> None:
        modules = list({id(m): m for m in models.values()}.values())
        if plan.placement == "model_offload":  # diffusers chains the models' hooks in the pipeline's order
            pipe.enable_model_cpu_offload(device=device)
        elif plan.placement in ("group_offload", "sequential_offload"):
            import torch
            from accelerate import cpu_offload
            from diffusers.hooks import apply_group_offloading
            for module in modules:
                if plan.placement == "group_offload" and module is models.get("vae"):
                    # stays on the device: small, and SDXL's pipeline casts it to float32 to decode, which
                    # group offload's float16 CPU copies would undo
                    module.to(device)
                    self._state[module] = "none"
                    continue
                module.to("cpu")
                if plan.placement == "group_offload":
                    apply_group_offloading(module, onload_device=torch.device(device), offload_type="block_level",
                                           num_blocks_per_group=1, use_stream=device.startswith("cuda"))
                else:  # as diffusers' enable_sequential_cpu_offload, per model (ControlNets unwrapped)
                    cpu_offload(module, torch.device(device), offload_buffers=len(module._parameters) > 0)
                self._state[module] = plan.placement
        else:
            for module in modules:
                self._state[module] = plan.placement

    def forget(self, models: dict[str, Any]) -> None:
        """Something else moved ``models`` (hooks, devices): the next request checks and places them again."""
        for module in models.values():
            self._state.pop(module, None)

    def _on_device(self, module: Any, device: str) -> bool:
        """Placed on ``device`` by this object and, as far as a cheap look tells, not hooked or moved since."""
        import torch
        if self._state.get(module) != "none" or hasattr(module, "_hf_hook") or \
                getattr(getattr(module, "_diffusers_hook", None), "hooks", None):
            return False
        param, want = next(module.parameters(), None), torch.device(device)
        return param is None or (param.device.type == want.type and want.index in (None, param.device.index))

    def release(self, module: Any) -> None:
        """Take every offload hook off ``module``; its weights end up real (on the CPU after an offload)."""
        from accelerate.hooks import remove_hook_from_module
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.group_offloading import _GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, \
            _LAZY_PREFETCH_GROUP_OFFLOADING
        remove_hook_from_module(module, recurse=True)
        registry = HookRegistry.check_if_exists_or_initialize(module)
        for name in (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING):
            registry.remove_hook(name, recurse=True)
        self._state[module] = "cpu"
