import asyncio, os, sys, time, json, base64, io
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray, httpx
from ray import serve
from sdcompose.raycluster import runtime_env
t0 = time.time()
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, runtime_env=runtime_env())
serve.start(http_options={"host": "127.0.0.1", "port": 18765})
from sdcompose.server.rayserve import Options, application
serve.run(application(Options(replicas=2, models_per_replica=1, cpus_per_replica=1, max_queue=32)), name="sdcompose", route_prefix="/")
print("deployed", time.time() - t0, flush=True)

async def main():
    async with httpx.AsyncClient(base_url="http://127.0.0.1:18765", timeout=600) as c:
        reqs = [{"prompt": f"p{i}", "model": m, "width": 64, "height": 64, "steps": 2, "seed": i}
                for i, m in enumerate(["tiny-sd15", "tiny-sdxl"] * 2)]
        rs = await asyncio.gather(*[c.post("/v1/generate", json=r) for r in reqs])
        for r, q in zip(rs, reqs):
            body = r.json()
            print(r.status_code, q["model"], body.get("metadata", {}).get("replica") if r.status_code == 200 else body)
        r = await c.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1, "override_settings": {"sd_model_checkpoint": "tiny-sd15"}})
        print("a1111", r.status_code, str(r.json())[:300])
asyncio.run(main())
print("done", time.time() - t0)
serve.shutdown(); ray.shutdown()
