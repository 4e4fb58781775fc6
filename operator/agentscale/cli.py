"""The `agentscale` command: generate the CRD, render or validate workflows, run the operator."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from agentscale.api.crd import render_crd_yaml
from agentscale.api.models import KIND, AgentWorkflow
from agentscale.api.validation import InvalidSpec, parse_spec
from agentscale.manifests import dump_all
from agentscale.render import render_workflow

CRD_PATH = Path("crds/agentscale.io_agentworkflows.yaml")


def _load(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind") == KIND]


def _workflow(doc: dict[str, Any]) -> AgentWorkflow:
    meta = doc.get("metadata") or {}
    spec = parse_spec(doc.get("spec") or {}, name=str(meta.get("name", "")))
    return AgentWorkflow(
        metadata={"name": meta.get("name", ""), "namespace": meta.get("namespace")}, spec=spec
    )


def _emit(text: str, path: str | None) -> int:
    if path:
        Path(path).write_text(text)
        print(f"wrote {path}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    return _emit(render_crd_yaml(), args.write)


def cmd_prometheus_rules(args: argparse.Namespace) -> int:
    from agentscale.resource_controller.promql import Windows, recording_rules

    header = (
        "# The resource controller's signals as Prometheus recording rules (agentscale prometheus-rules).\n"
        "# Load them into the Prometheus the operator reads, then set AGENTSCALE_RC_RECORDED_SIGNALS=1\n"
        "# (the chart's prometheusRule.enabled does both). Generated: do not edit.\n"
    )
    body = yaml.safe_dump(recording_rules(Windows(), args.interval), sort_keys=False, width=1000)
    return _emit(header + body, args.write)


def cmd_docs(args: argparse.Namespace) -> int:
    from agentscale.api.reference import render_reference

    return _emit(render_reference(), args.write)


def cmd_render(args: argparse.Namespace) -> int:
    docs: list[dict[str, Any]] = []
    for path in args.file:
        for doc in _load(path):
            try:
                docs.extend(render_workflow(_workflow(doc)))
            except InvalidSpec as exc:
                print(f"{path}: {doc.get('metadata', {}).get('name')}: {exc}", file=sys.stderr)
                return 1
    sys.stdout.write(dump_all(docs))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.file:
        for doc in _load(path):
            name = (doc.get("metadata") or {}).get("name")
            try:
                _workflow(doc)
                print(f"{path}: {name}: ok")
            except InvalidSpec as exc:
                bad += 1
                for problem in exc.problems:
                    print(f"{path}: {name}: {problem}", file=sys.stderr)
    return 1 if bad else 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    import kopf

    import agentscale.handlers  # noqa: F401  (registers the handlers)

    namespaces = args.namespace or []
    kopf.configure(verbose=args.verbose, debug=False)
    if not args.verbose:
        # One line per handled event is noise at a thousand workflows; keep warnings and errors.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        # Nor one line per health probe (two replicas x two probes every 10 s).
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=args.standalone,
            liveness_endpoint=args.liveness,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentscale", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("crd", help="print the CRD generated from the API models")
    p.add_argument("--write", metavar="PATH", help=f"write it to PATH (the repo keeps it at {CRD_PATH})")
    p.set_defaults(fn=cmd_crd)
    p = sub.add_parser(
        "prometheus-rules", help="print the controller's signals as Prometheus recording rules"
    )
    p.add_argument(
        "--interval", type=float, default=None, help="evaluation interval in seconds (default: Prometheus')"
    )
    p.add_argument("--write", metavar="PATH", help="write it to PATH (the chart keeps it in files/)")
    p.set_defaults(fn=cmd_prometheus_rules)
    p = sub.add_parser("docs", help="print the API reference generated from the CRD schema")
    p.add_argument("--write", metavar="PATH", help="write it to PATH (the repo keeps it at docs/api.md)")
    p.set_defaults(fn=cmd_docs)
    p = sub.add_parser("render", help="print the Kubernetes objects a workflow file becomes")
    p.add_argument("file", nargs="+", help="workflow YAML files ('-' for stdin)")
    p.set_defaults(fn=cmd_render)
    p = sub.add_parser("validate", help="check workflow files the way the operator does")
    p.add_argument("file", nargs="+")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("run", help="run the operator against the current kubeconfig or in-cluster")
    p.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable)")
    p.add_argument("--standalone", action="store_true", help="no peering (single replica, local runs)")
    p.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("-v", "--verbose", action="store_true", help="log every handler call")
    p.set_defaults(fn=cmd_run)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
