"""n > 1: the choices of one request. With a reward model, Best-of-N in n slots (every sample back, best first, with its
score); without one, n independent samples, each in a slot of its own (seeded seed .. seed + n - 1)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

from fastapi.responses import Response

from ..errors import SiaError
from .openai_api import ApiError, as_api_error, finish_reason_of, finite
from .openai_api import Request as ApiRequest


async def best_of(request: Any, engine: Any, mix: tuple[tuple[str, float], ...] | None, req: ApiRequest, prompt: Any,
                   options: dict[str, Any], chat: bool, cancel: threading.Event) -> Any:
    """n > 1: Best-of-N in n slots; every sample comes back, best first, with its reward. Without a reward model to rank
    them: n independent samples (seeds seed .. seed + n - 1 when the request names one), in that order."""
    if req.stream:
        raise ApiError(400, "stream is not supported with n > 1 (the best sample is known only at the end)", param="stream")
    if engine.steerer.scorer is None and mix is None:
        return await samples(request, engine, req, prompt, options, chat, cancel)
    try:
        job = await engine.submit(prompt, options, cancel, mix, n=req.n)  # n slots (or alone, when n is more than all the slots)
    except SiaError as exc:
        raise as_api_error(exc) from None
    while not job.done():
        await asyncio.wait([job], timeout=0.1)
        if not cancel.is_set() and not job.done() and await request.is_disconnected():
            cancel.set()  # the search stops at its next step and its slots are freed
    try:
        result = job.result()
    except SiaError as exc:
        raise as_api_error(exc) from None
    if cancel.is_set() and await request.is_disconnected():
        return Response(status_code=499)
    ranked = sorted(result.candidates, key=lambda c: -c.score)
    choices = []
    for i, c in enumerate(ranked):
        g = c.generation
        body = {"message": {"role": "assistant", "content": g.text}} if chat else {"text": g.text, "logprobs": None}
        choices.append({"index": i, **body, "finish_reason": finish_reason_of(g), "sia_score": finite(float(c.score)), "sia_sample": c.index})
    st = result.stats
    usage = {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.tokens, "total_tokens": st.prompt_tokens + st.tokens,
             "sia": finite({"best_of": req.n, "ranked_by": result.ranked_by, "decode_calls": st.decode_calls, "reward_calls": st.reward_calls, "seconds": st.seconds,
                             "reward_seconds": st.reward_seconds, "tokens_per_s": st.tokens_per_s})}
    return {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": engine.model_id, "choices": choices, "usage": usage}


async def samples(request: Any, engine: Any, req: ApiRequest, prompt: Any, options: dict[str, Any], chat: bool,
                   cancel: threading.Event) -> Any:
    """n independent answers to one request, each in a slot of its own (seeded: seed + i)."""
    seed = options.get("seed")
    try:
        jobs = [await engine.submit(prompt, {**options, **({"seed": seed + i} if seed is not None else {})}, cancel) for i in range(req.n)]
    except SiaError as exc:
        cancel.set()
        raise as_api_error(exc) from None
    while not all(j.done() for j in jobs):
        await asyncio.wait(jobs, timeout=0.1)
        if not cancel.is_set() and await request.is_disconnected():
            cancel.set()
    if cancel.is_set() and await request.is_disconnected():
        return Response(status_code=499)
    try:
        generations = [j.result() for j in jobs]
    except SiaError as exc:
        raise as_api_error(exc) from None
    choices = []
    for i, g in enumerate(generations):
        body = {"message": {"role": "assistant", "content": g.text}} if chat else {"text": g.text, "logprobs": None}
        choices.append({"index": i, **body, "finish_reason": finish_reason_of(g)})
    prompt_tokens, tokens = generations[0].stats.prompt_tokens, sum(g.stats.tokens for g in generations)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens,
             "sia": finite({"samples": req.n, "ranked_by": None, "seeds": [g.stats.seed for g in generations]})}
    return {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": engine.model_id, "choices": choices, "usage": usage}
