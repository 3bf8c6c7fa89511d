"""Every call to Replicate, through the official `replicate` client.

    core.py         Upstream: verify_token, run_prediction, settle + find_predictions, aclose
    predictions.py  PredictionRun: create → poll → terminal; cancel on every other exit
    policy.py       which failures are retried (and the create ambiguity rule), backoff
    clients.py      one replicate.Client per account fingerprint (bounded LRU, pinned leases)
    exchange.py     the HTTP-layer facts ReplicateError drops (Retry-After, raw body)
    deadline.py     Cancel-After on every create: Replicate ends a prediction by the run's deadline
    results.py      PredictionResult, snapshots, output normalisation
    tasks.py        finishing a create/cancel despite our own cancellation

Never imports FastAPI or service.coordination: it knows nothing about limits.
"""

from service.upstream.core import RunWatch, Upstream
from service.upstream.policy import CreateOutcomeUnknown
from service.upstream.results import PredictionResult

__all__ = ["CreateOutcomeUnknown", "PredictionResult", "RunWatch", "Upstream"]
