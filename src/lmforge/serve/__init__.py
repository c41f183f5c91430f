"""`lmforge serve`: an OpenAI-compatible HTTP server over the continuous-batching engine.

`schemas` (request and response bodies), `errors` (OpenAI's error shape), `runner` (the engine
thread and its inbox), `metrics` (Prometheus text), `app` (`create_app`, the FastAPI app) and
`server` (`run_server`: load, build, serve with uvicorn). Importing this package imports none of
them, so that the CLI stays fast.
"""
