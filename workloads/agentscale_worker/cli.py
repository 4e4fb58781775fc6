"""``agentscale-worker``: the entrypoint of step and gateway pods.

  agentscale-worker step --handler package.module:function
  agentscale-worker gateway [--port 8080] [--validator package.module:function]

Configuration comes from the AGENTSCALE_* environment (docs/dataplane.md); flags override it. The gateway
validates run inputs only when told which function to use (``--validator`` or AGENTSCALE_VALIDATOR); by
default it accepts any JSON input. The simulated model server of the benchmarks is not here: it is test
harness (``python -m agentscale_harness.sim``, never in the worker image)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from .config import Settings


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


async def _step(args: argparse.Namespace) -> None:
    from .handler import load_handler
    from .runtime import StepWorker

    overrides: dict[str, Any] = {}
    if args.step:
        overrides["step"] = args.step
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    settings = Settings.from_env(**overrides)
    worker = StepWorker(settings, load_handler(args.handler))
    _on_signals(worker.stop)
    logging.info(
        "step %s of %s/%s: handler %s", settings.step, settings.namespace, settings.workflow, args.handler
    )
    await worker.run()


async def _gateway(args: argparse.Namespace) -> None:
    from .gateway import Gateway
    from .handler import load_handler

    overrides: dict[str, Any] = {}
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    settings = Settings.from_env(**overrides)
    spec = args.validator or settings.validator
    validator: Any = load_handler(spec) if spec else None
    gw = Gateway(settings, validator)
    stop = asyncio.Event()
    _on_signals(stop.set)
    port = await gw.start(port=args.port)
    logging.info(
        "gateway for %s/%s on :%d, input validator %s",
        settings.namespace,
        settings.workflow,
        port,
        spec or "none",
    )
    await stop.wait()
    await gw.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentscale-worker")
    sub = parser.add_subparsers(dest="cmd", required=True)
    step = sub.add_parser("step", help="consume a step's stream and run its handler")
    step.add_argument("--handler", required=True, help="package.module:function")
    step.add_argument("--step", help="overrides AGENTSCALE_STEP")
    step.add_argument("--metrics-port", type=int)
    gw = sub.add_parser("gateway", help="serve the workflow's HTTP API")
    gw.add_argument("--port", type=int, help="overrides AGENTSCALE_GATEWAY_PORT (8080)")
    gw.add_argument(
        "--validator",
        help="package.module:function taking the run input and returning an error message or None; "
        "overrides AGENTSCALE_VALIDATOR (default: no validation)",
    )
    gw.add_argument("--metrics-port", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _use_uvloop()
    run = {"step": _step, "gateway": _gateway}[args.cmd]
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
