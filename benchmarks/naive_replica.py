"""How the replaced service limited concurrency: an asyncio.Semaphore per process.

A minimal stand-in replica for benchmarks/e2e.py, on the same stack as the service (FastAPI,
uvicorn, the official client):
- `POST /generate-batch` runs its tasks under a process-local semaphore of
  REPLICATE_CONCURRENT_LIMIT. Three of these behind a balancer admit three times the limit
  upstream.
- `POST /generate` is one prediction and nothing else: no limits, no validation, no auth. Its
  added latency over calling Replicate directly is the floor of this stack for any service that
  sits between a caller and Replicate (an extra HTTP hop, a server and a client in between).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import uvicorn
from fastapi import FastAPI
from replicate.client import Client

LIMIT = int(os.environ.get("REPLICATE_CONCURRENT_LIMIT", "20"))
app = FastAPI()
state: dict[str, Any] = {}


async def one(client: Client, prompt: str) -> str:
    async with state["semaphore"]:
        prediction = await client.models.predictions.async_create(
            model="black-forest-labs/flux-dev", input={"prompt": prompt}, wait=5
        )
        if prediction.status not in ("succeeded", "failed", "canceled"):
            await prediction.async_wait()
        return str(prediction.status)


def client() -> Client:
    if "client" not in state:
        state["client"] = Client(
            api_token=os.environ["REPLICATE_API_TOKEN"], base_url=os.environ["REPLICATE_BASE_URL"]
        )
        state["semaphore"] = asyncio.Semaphore(LIMIT)
    return state["client"]  # type: ignore[no-any-return]


@app.post("/generate")
async def generate(body: dict[str, Any]) -> dict[str, Any]:
    prediction = await client().models.predictions.async_create(
        model="black-forest-labs/flux-dev", input={"prompt": body["prompt"]}, wait=5
    )
    return {"success": True, "generated_files": prediction.output, "prediction_id": prediction.id}


@app.post("/generate-batch")
async def generate_batch(body: dict[str, Any]) -> dict[str, Any]:
    statuses = await asyncio.gather(*(one(client(), t["prompt"]) for t in body["tasks"]))
    return {"successful_count": sum(s == "succeeded" for s in statuses)}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
