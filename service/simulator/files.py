"""Output files at the simulator's own origin: `GET /files/{prediction_id}/{filename}`.

Like replicate.delivery, no token is required; a file exists only while its prediction is
`succeeded` and not yet purged (output_ttl_s after completion).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.simulator import responses
from service.simulator.images import CONTENT_TYPES, ImageRequest
from service.simulator.runtime import SimulatorRuntime


def routes(runtime: SimulatorRuntime) -> list[Route]:
    async def get_file(request: Request) -> Response:
        prediction_id = request.path_params["prediction_id"]
        filename = request.path_params["filename"]
        prediction = runtime.store.get(prediction_id)
        now = runtime.clock()
        if prediction is None or prediction.status_at(now) != "succeeded":
            return responses.not_found()
        if prediction.is_expired(now, runtime.config.output_ttl_s):
            runtime.images.discard_prefix(f"{prediction_id}/")
            return responses.not_found()
        names = prediction.filenames()
        if filename not in names:
            return responses.not_found()
        index = names.index(filename)
        plan = prediction.plan
        image = ImageRequest(
            prompt=str(prediction.input.get("prompt", "")),
            caption=f"{prediction.model.name} #{index} {plan.width}x{plan.height}",
            width=plan.width,
            height=plan.height,
            fmt=plan.fmt,
            quality=plan.quality,
            seed=prediction.seed + index,
        )
        data = await runtime.images.get(f"{prediction_id}/{filename}", image)
        return Response(
            data,
            media_type=CONTENT_TYPES[plan.fmt],
            headers={"Cache-Control": "public, max-age=3600"},
        )

    return [Route("/files/{prediction_id}/{filename}", get_file, methods=["GET"])]
