"""How the replaced service limited concurrency: an asyncio.Semaphore per process.

A minimal stand-in replica for benchmarks/e2e.py: `POST /generate-batch` runs its tasks under a
process-local semaphore of REPLICATE_CONCURRENT_LIMIT, through the official client. Three of
these behind a balancer admit three times the limit upstream.
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


@app.post("/generate-batch")
async def generate_batch(body: dict[str, Any]) -> dict[str, Any]:
    if "client" not in state:
        state["client"] = Client(
            api_token=os.environ["REPLICATE_API_TOKEN"], base_url=os.environ["REPLICATE_BASE_URL"]
        )
        state["semaphore"] = asyncio.Semaphore(LIMIT)
    statuses = await asyncio.gather(*(one(state["client"], t["prompt"]) for t in body["tasks"]))
    return {"successful_count": sum(s == "succeeded" for s in statuses)}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
