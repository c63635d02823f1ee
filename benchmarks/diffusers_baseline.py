"""(Copied unchanged from the project's shared reference folder, bench/diffusers_baseline.py, so it travels
with the repository to GPU machines.)

Anchor measurement: plain diffusers SD1.5 (+ControlNet, +LoRA) with random weights.

Weights' values do not change the cost of a step, so random full-size
architectures give honest speed and memory figures where no real
checkpoint can be downloaded.  Run:  python diffusers_baseline.py [--smoke]   (writes $OUT/anchor.json)
"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
import torch

SMOKE = "--smoke" in sys.argv
DEV = "cuda" if torch.cuda.is_available() and not SMOKE else "cpu"
DT = torch.float16 if DEV == "cuda" else torch.float32
import tempfile
OUT = os.environ.get("OUT") or tempfile.mkdtemp()
os.makedirs(OUT, exist_ok=True)
RES = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "torch": torch.__version__}
T0 = time.time()


def save():
    with open(os.path.join(OUT, "anchor.json"), "w") as f:
        json.dump(RES, f, indent=1)


def log(k, v):
    RES[k] = v
    print(f"[{time.time()-T0:6.1f}s] {k}: {v}", flush=True)
    save()


from diffusers import (UNet2DConditionModel, AutoencoderKL, ControlNetModel, StableDiffusionPipeline,
                       StableDiffusionControlNetPipeline, DPMSolverMultistepScheduler)
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
import diffusers
log("diffusers", diffusers.__version__)

if SMOKE:
    ucfg = dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, norm_num_groups=8, sample_size=8)
    vcfg = dict(block_out_channels=(16,) * 4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                norm_num_groups=8, latent_channels=4, layers_per_block=1)
    tcfg = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    H = 64
    STEPS = 4
else:
    ucfg = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD1.x defaults otherwise
    vcfg = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
    tcfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)
    H = 512
    STEPS = 20

import tempfile
d = tempfile.mkdtemp()
vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
for c in "abcdefghijklmnopqrstuvwxyz":
    vocab[c] = len(vocab)
    vocab[c + "</w>"] = len(vocab)
json.dump(vocab, open(f"{d}/vocab.json", "w"))
open(f"{d}/merges.txt", "w").write("#version: 0.2\n")
tok = CLIPTokenizer(f"{d}/vocab.json", f"{d}/merges.txt", model_max_length=77)

torch.manual_seed(0)
t = time.time()
with torch.device(DEV):
    unet = UNet2DConditionModel(**ucfg)
    vae = AutoencoderKL(in_channels=3, out_channels=3, **vcfg)
    te = CLIPTextModel(tcfg)
    cn = ControlNetModel.from_unet(unet)
    cn2 = ControlNetModel.from_unet(unet)
for m in (unet, vae, te, cn, cn2):
    m.to(DEV, DT).eval()
log("init_s", round(time.time() - t, 1))
log("params_M", {n: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)
                 for n, m in dict(unet=unet, controlnet=cn, vae=vae, text_encoder=te).items()})

sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
common = dict(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
              feature_extractor=None, requires_safety_checker=False)
sd = StableDiffusionPipeline(**common)
sdc = StableDiffusionControlNetPipeline(controlnet=cn, **common)
sdc2 = StableDiffusionControlNetPipeline(controlnet=[cn, cn2], **common)
for p in (sd, sdc, sdc2):
    p.set_progress_bar_config(disable=True)

from PIL import Image
import numpy as np
rng = np.random.default_rng(0)
ctrl = Image.fromarray((rng.random((H, H, 3)) * 255).astype("uint8"))


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def run(pipe, n=3, steps=STEPS, h=H, batch=1, **kw):
    """Returns (median seconds per image-call, median s per denoise step, peak GB)."""
    stamps = []

    def cb(p, i, tt, k):
        sync()
        stamps.append(time.perf_counter())
        return k

    pipe(prompt=["a photo of a cat"] * batch, num_inference_steps=2, height=h, width=h, output_type="np",
         generator=torch.Generator(DEV).manual_seed(0), **kw)  # warm-up
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tot, per = [], []
    for _ in range(n):
        stamps.clear()
        sync()
        t = time.perf_counter()
        pipe(prompt=["a photo of a cat"] * batch, num_inference_steps=steps, height=h, width=h, output_type="np",
             generator=torch.Generator(DEV).manual_seed(0), callback_on_step_end=cb, **kw)
        sync()
        tot.append(time.perf_counter() - t)
        if len(stamps) > 2:
            per.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0
    return dict(image_s=round(sorted(tot)[len(tot) // 2], 4), step_ms=round(1000 * sorted(per)[len(per) // 2], 2) if per else None,
                peak_GB=round(peak, 3))


log("sd15_txt2img_sdpa", run(sd))
log("sd15_cn1_sdpa", run(sdc, image=ctrl))
log("sd15_cn2_sdpa", run(sdc2, image=[ctrl, ctrl]))
log("sd15_cn1_sdpa_batch4", run(sdc, n=2, batch=4, image=ctrl))

# FLOPs of one CFG step (batch 2) of UNet and ControlNet, for the physical floor
try:
    from torch.utils.flop_counter import FlopCounterMode
    lat = torch.randn(2, 4, H // 8, H // 8, device=DEV, dtype=DT)
    enc = torch.randn(2, 77, tcfg.hidden_size, device=DEV, dtype=DT)
    cimg = torch.randn(2, 3, H, H, device=DEV, dtype=DT)
    tt = torch.tensor([500, 500], device=DEV)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            unet(lat, tt, enc)
        uf = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            cn(lat, tt, enc, controlnet_cond=cimg, return_dict=False)
        cf = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vae.decode(lat[:1])
        vf = fc.get_total_flops()
    log("tflop_per_cfg_step", {"unet": round(uf / 1e12, 3), "controlnet": round(cf / 1e12, 3), "vae_decode": round(vf / 1e12, 3)})
except Exception as e:
    log("flops_error", repr(e)[:300])

if DEV == "cuda":
    a = torch.randn(8192, 8192, device=DEV, dtype=DT)
    b = torch.randn(8192, 8192, device=DEV, dtype=DT)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    log("matmul_fp16_tflops", round(10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12, 1))
    del a, b

# classic (non-SDPA) attention: what memory-efficient attention saves
sdc.unet.set_attn_processor(AttnProcessor())
cn.set_attn_processor(AttnProcessor())
log("sd15_cn1_vanilla_attn", run(sdc, n=2, image=ctrl))
sdc.enable_attention_slicing()
log("sd15_cn1_sliced_attn", run(sdc, n=2, image=ctrl))
sdc.disable_attention_slicing()
sdc.unet.set_attn_processor(AttnProcessor2_0())
cn.set_attn_processor(AttnProcessor2_0())

# 1024 px, with VAE tiling
log("sd15_cn1_1024", run(sdc, n=1, h=2 * H, image=ctrl.resize((2 * H, 2 * H))))
sdc.vae.enable_tiling()
log("sd15_cn1_1024_vae_tiling", run(sdc, n=1, h=2 * H, image=ctrl.resize((2 * H, 2 * H))))
sdc.vae.disable_tiling()

# LoRA, unfused (PEFT) vs base
try:
    from peft import LoraConfig
    unet.add_adapter(LoraConfig(r=64, lora_alpha=64, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="x")
    unet.to(DEV, DT)
    log("sd15_cn1_lora_r64_unfused", run(sdc, n=2, image=ctrl))
    unet.fuse_lora() if hasattr(unet, "fuse_lora") else None
    log("sd15_cn1_lora_r64_fused", run(sdc, n=2, image=ctrl))
except Exception as e:
    log("lora_error", repr(e)[:300])

if DEV == "cuda":
    # torch.compile of the UNet and ControlNet (default inductor mode)
    try:
        t = time.time()
        unet2 = torch.compile(unet)
        cnc = torch.compile(cn)
        sdcc = StableDiffusionControlNetPipeline(controlnet=cnc, **{**common, "unet": unet2})
        sdcc.set_progress_bar_config(disable=True)
        sdcc(prompt="a", image=ctrl, num_inference_steps=2, height=H, width=H, output_type="np")
        log("compile_s", round(time.time() - t, 1))
        log("sd15_cn1_compiled", run(sdcc, n=3, image=ctrl))
        del sdcc, unet2, cnc
    except Exception as e:
        log("compile_error", repr(e)[:300])

    # offload modes (fresh pipelines so hooks do not stack)
    torch.cuda.empty_cache()
    try:
        p = StableDiffusionControlNetPipeline(controlnet=cn, **common)
        p.set_progress_bar_config(disable=True)
        p.enable_model_cpu_offload()
        log("sd15_cn1_model_offload", run(p, n=1, image=ctrl))
        p.remove_all_hooks()
    except Exception as e:
        log("model_offload_error", repr(e)[:300])
    try:
        for m in (unet, vae, te, cn):
            m.to("cpu")
        torch.cuda.empty_cache()
        p = StableDiffusionControlNetPipeline(controlnet=cn, **common)
        p.set_progress_bar_config(disable=True)
        p.enable_sequential_cpu_offload()
        log("sd15_cn1_sequential_offload_4steps", run(p, n=1, steps=4, image=ctrl))
    except Exception as e:
        log("seq_offload_error", repr(e)[:300])
log("total_s", round(time.time() - T0, 1))
