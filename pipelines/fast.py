"""Fast mode: the UNet and ControlNet forwards compiled and replayed as CUDA graphs, static shapes.

``torch.compile(mode="reduce-overhead")`` on diffusers' wiring fails: the ControlNet's residuals live
in CUDA-graph memory that the UNet's replay overwrites while they are still in use. Here each
module's forward is captured in a graph of its own, with its own static input buffers and memory
pool. A call copies its inputs into the static buffers, replays, and returns clones of the static
outputs, so no replay ever touches a tensor handed out before: ControlNet residuals are copied into
the UNet graph's own buffers, and a ControlNet used twice in one step (two units, one model) is safe.

- Graphs are keyed by the call's structure and tensor shapes/dtypes (size, batch, guidance), and by
  the addresses of the module's weights, so moving or reloading weights recaptures. The
  ControlNet's per-step ``conditioning_scale`` (0 outside control_guidance_start/end) is a value in
  a static buffer, not part of the key.
- Forwards are compiled with inductor (default mode: fused kernels, convolutions in channels_last
  where inductor finds that faster) before capture; its artefacts are cached under
  ``$SDCOMPOSE_HOME/compile`` so a second process starts warm. If compiling fails, the eager
  forward is captured instead; if capturing fails, that call runs eagerly. Both are reported.
- Fused LoRAs change weights in place, so graphs stay valid; an active unfused LoRA (or any offload
  plan, or a device other than CUDA) makes the whole request eager, with the reason in the metadata.
- The graph is installed as the module instance's ``forward`` for the request only (the mechanism
  accelerate's offload hooks use); diffusers' classes are not modified.
"""
from __future__ import annotations

import functools
import logging
import os
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from sdcompose.errors import describe

log = logging.getLogger("sdcompose.fast")

WARMUP = 2  # eager (or compiling) runs on a side stream before capture
GRAPHS_PER_MODULE = 4  # captured shapes kept per module (each holds its activation pool)
DYNAMIC_SCALARS = ("conditioning_scale",)


class _Scalar:
    """A float argument that changes between steps: replayed from a static 0-dim buffer."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = float(value)


def _describe(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), leaf.dtype, leaf.device)
    if isinstance(leaf, _Scalar):
        return ("scalar",)
    try:
        hash(leaf)
        return ("value", type(leaf).__name__, leaf)
    except TypeError:
        return ("value", type(leaf).__name__, repr(leaf))


def signature(args: tuple, kwargs: dict[str, Any]) -> tuple[Any, list[Any], Any]:
    """``(key, leaves, spec)`` of a call: tensors keyed by shape/dtype/device, per-step scalars by kind only,
    everything else by value."""
    kwargs = {name: _Scalar(value) if name in DYNAMIC_SCALARS and isinstance(value, (int, float))
              and not isinstance(value, bool) else value for name, value in kwargs.items()}
    leaves, spec = tree_flatten((args, kwargs))
    return (spec, tuple(_describe(leaf) for leaf in leaves)), leaves, spec


def _weights_token(module: Any) -> int:
    """Changes when any (non-LoRA) weight of ``module`` gets new storage."""
    return hash(tuple(t.data_ptr() for name, t in (*module.named_parameters(), *module.named_buffers())
                      if "lora_" not in name))


def unfused_lora(module: Any) -> bool:
    """Whether a PEFT LoRA layer in ``module`` is active but not merged into its base weights."""
    for layer in module.modules():
        merged = getattr(layer, "merged_adapters", None)
        if merged is None or getattr(layer, "disable_adapters", True):
            continue
        own = set(getattr(layer, "lora_A", {}))
        if any(name in own and name not in merged for name in layer.active_adapters):
            return True
    return False


class _Graph:
    """One captured forward with static inputs and outputs."""

    def __init__(self, fn: Any, leaves: list[Any], spec: Any, device: Any, dtype: Any) -> None:
        self.statics = [leaf.detach().clone() if isinstance(leaf, torch.Tensor)
                        else torch.full((), leaf.value, dtype=dtype, device=device) if isinstance(leaf, _Scalar)
                        else leaf for leaf in leaves]
        args, kwargs = tree_unflatten(self.statics, spec)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                fn(*args, **kwargs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            out = fn(*args, **kwargs)
        self.outputs, self.out_spec = tree_flatten(out)

    def __call__(self, leaves: list[Any]) -> Any:
        for static, leaf in zip(self.statics, leaves):
            if isinstance(leaf, torch.Tensor):
                static.copy_(leaf)
            elif isinstance(leaf, _Scalar):
                static.fill_(leaf.value)  # a kernel argument: no host-device sync
        self.graph.replay()
        return tree_unflatten([t.clone() if isinstance(t, torch.Tensor) else t for t in self.outputs], self.out_spec)


class FastMode:
    """Compiled forwards and captured graphs, kept per module across requests."""

    def __init__(self, cache_dir: os.PathLike | str) -> None:
        self.cache_dir = str(cache_dir)
        self._compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> fn
        self._graphs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (token, OrderedDict)
        self.compile = True

    @staticmethod
    def why_not(device: str, placement: str, modules: list[Any]) -> str | None:
        """Why this request cannot run fast mode, or None."""
        if not device.startswith("cuda"):
            return f"{device.split(':')[0]}: CUDA graphs need a CUDA device; ran eager"
        if placement != "none":
            return f"memory plan '{placement}' moves weights during each step; ran eager"
        if any(unfused_lora(m) for m in modules):
            return "an active LoRA is not fused into the weights; ran eager"
        return None

    @contextmanager
    def session(self, modules: list[Any], enabled: bool, device: str, placement: str) -> Iterator[dict[str, Any]]:
        """Install graphed forwards on ``modules`` for one request; yield the report for the metadata."""
        if not enabled:
            yield {"active": False, "reason": "off"}
            return
        modules = list({id(m): m for m in modules}.values())
        reason = self.why_not(device, placement, modules)
        if reason is not None:
            log.warning("fast mode: %s", reason)
            yield {"active": False, "reason": reason}
            return
        report: dict[str, Any] = {"active": True, "compiled": self.compile, "captured": 0, "reason": "",
                                  "eager_calls": 0}
        saved = {}
        for module in modules:
            saved[module] = module.__dict__.get("forward")
            module.forward = self._forward(module, report)
        try:
            yield report
        finally:
            for module, previous in saved.items():
                if previous is None:
                    del module.forward
                else:
                    module.forward = previous

    # ---- per module ----------------------------------------------------------------------------
    def _fn(self, module: Any) -> Any:
        if not self.compile:
            return type(module).forward.__get__(module)
        if module not in self._compiled:  # compiled unbound, so this cache holds no reference to the module
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", self.cache_dir)  # read by inductor on each compile
            self._compiled[module] = torch.compile(type(module).forward, dynamic=False)
        return functools.partial(self._compiled[module], module)

    def _forward(self, module: Any, report: dict[str, Any]):
        token = _weights_token(module)
        held = self._graphs.get(module)
        if held is None or held[0] != token:
            held = (token, OrderedDict())
            self._graphs[module] = held
        graphs = held[1]
        eager = type(module).forward.__get__(module)
        param = next(module.parameters())

        def forward(*args: Any, **kwargs: Any) -> Any:
            key, leaves, spec = signature(args, kwargs)
            graph = graphs.get(key)
            if graph is None:
                graph = self._capture(module, leaves, spec, param, report)
                graphs[key] = graph
                while len(graphs) > GRAPHS_PER_MODULE:
                    graphs.popitem(last=False)
            graphs.move_to_end(key)
            if graph is False:  # capture failed for this shape: run it eagerly
                report["eager_calls"] += 1
                plain = [leaf.value if isinstance(leaf, _Scalar) else leaf for leaf in leaves]
                args, kwargs = tree_unflatten(plain, spec)
                return eager(*args, **kwargs)
            return graph(leaves)

        return forward

    def _capture(self, module: Any, leaves: list[Any], spec: Any, param: Any, report: dict[str, Any]) -> Any:
        """A new graph for this call, or False (this shape runs eager); the report says what happened."""
        name = type(module).__name__
        try:
            graph = _Graph(self._fn(module), leaves, spec, param.device, param.dtype)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            detail = describe(exc, 200)
            compiled, self.compile = self.compile, False  # from now on, graphs of the eager forwards
            report["compiled"] = False
            report["reason"] = f"compiled {name} failed ({detail}); captured the eager forwards instead" \
                if compiled else f"{name} could not be captured ({detail}); it ran eager"
            log.warning("fast mode: %s", report["reason"])
            return self._capture(module, leaves, spec, param, report) if compiled else False
        report["captured"] += 1
        return graph
