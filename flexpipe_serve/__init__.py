"""flexpipe_serve: an OpenAI-compatible HTTP endpoint (FastAPI + uvicorn) in front of a pipeline of
flexpipe_kernel stages driven by its continuous-batching engine (`flexpipe-sim serve`).

Modules: `tokens.py` (the text <-> token-id mapping), `pipeline.py` (devices, model, stages),
`worker.py` (the one engine thread that batches every HTTP request), `app.py` (the routes),
`server.py` (binding the port and running uvicorn)."""
