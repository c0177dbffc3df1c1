"""Running `serve`: bind the port first (so a port in use is one clear error before the model is
built), build the pipeline, start the engine thread, then hand the bound socket to uvicorn."""

from __future__ import annotations

import socket
from typing import Callable

from .pipeline import ServeSetupError, build_pipeline, model_args, parse_devices


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or ServeSetupError saying why not."""
    if not 0 <= port <= 65535:
        raise ServeSetupError(f"--port {port}: must be 0..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeSetupError(f"--host {host!r}: cannot resolve it ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse TIME_WAIT ports
    try:
        sock.bind(addr)
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as e:
        sock.close()
        raise ServeSetupError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def serve(scenario, *, port: int, host: str = "127.0.0.1", devices: str = "cpu:2", model: str | None = None,
          kv_blocks: int = 512, block_size: int = 16, token_budget: int = 512, max_seqs: int = 64,
          seed: int | None = None, cuda_graphs: bool = False, log: Callable[[str], None] = print) -> None:
    """Serve the scenario's first model until Ctrl-C. Raises ServeSetupError for bad input."""
    import uvicorn

    from .app import create_app
    from .worker import EngineWorker

    devs = parse_devices(devices)
    name, args = model_args(scenario.models[0], model)
    if kv_blocks < 2 or block_size < 1:
        raise ServeSetupError("--kv-blocks must be >= 2 and --block-size >= 1")
    sock = bind(host, port)
    try:
        seed = scenario.seed if seed is None else seed
        pipe = build_pipeline(name, args, devs, seed=seed, kv_blocks=kv_blocks, block_size=block_size)
        worker = EngineWorker(pipe, token_budget=token_budget, max_seqs=max_seqs, seed=seed,
                              cuda_graphs=cuda_graphs).start()
        bound = sock.getsockname()
        log(f"serving {name} ({args.n_layers} layers, random weights, seed {seed}) as {len(devs)} stages on "
            f"{', '.join(devs)}{' with CUDA-graph decode' if cuda_graphs else ''} at http://{host}:{bound[1]}/v1")
        server = uvicorn.Server(uvicorn.Config(create_app(worker), log_level="warning"))
        try:
            server.run(sockets=[sock])
        finally:
            worker.stop()
    finally:
        sock.close()
