"""Decision -> KubeRay ``RayService`` manifest (pure; no Ray, no Kubernetes client).

``spec.serveConfigV2`` is the very declarative config the live applier hands to
Serve (``serve_config.build_app_config``), so updating a RayService with the
config of a new decision behaves like a live apply: Serve updates replicas,
batch settings and variants in place and touches only the stages that changed.

Fields relied on (KubeRay ``ray.io/v1`` CRD, ray-operator/apis/ray/v1/rayservice_types.go):
``spec.serveConfigV2`` (a YAML string), ``spec.rayClusterConfig.rayVersion``,
``.headGroupSpec.{rayStartParams, template}``, ``.workerGroupSpecs[].{groupName,
replicas, minReplicas, maxReplicas, rayStartParams, template}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import yaml

from varipipe.pipelines.serve_config import (
    WORKER_NICENESS,
    WORKER_NICENESS_ENV,
    AppOptions,
    build_app_config,
)
from varipipe.records import Decision, PipelineSpec

__all__ = ["ClusterShape", "render_rayservice", "serve_config_v2", "worker_replicas", "gpu_worker_replicas",
           "to_yaml", "API_VERSION", "KIND", "SERVE_PORT", "TOKEN_SECRET_KEY", "GPU_RESOURCE"]

API_VERSION = "ray.io/v1"
KIND = "RayService"
# Ports: Serve HTTP (Serve's default 8000), GCS 6379, dashboard 8265, Ray client 10001,
# node metrics 8080 (the port KubeRay's own examples and PodMonitors scrape).
SERVE_PORT = 8000
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
METRICS_PORT = 8080
# The ingress reads its bearer token from this env var (never from the manifest itself):
# create the secret with `kubectl create secret generic <name> --from-literal=token=...`.
TOKEN_ENV = "VARIPIPE_TOKEN"
TOKEN_SECRET_KEY = "token"
# Ingress + controller replicas reserve 0.1 CPU each (pipelines/app.py LIGHT_NUM_CPUS).
LIGHT_CPUS = 0.2
# Worker groups may grow to this many times the decision's need, so the adapter
# (or an operator) can scale replicas up without editing the cluster shape.
MAX_WORKER_FACTOR = 2
# The Kubernetes extended resource of NVIDIA's device plugin: a pod asks for whole GPUs by it.
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class ClusterShape:
    """Pod sizes of the Ray cluster; defaults fit a small CPU node pool."""

    image: str = "rayproject/ray:2.60.0-py311-cpu"  # replace with an image that has varipipe installed
    ray_version: str = "2.60.0"
    worker_cpus: int = 4
    worker_memory: str = "8Gi"
    head_cpus: int = 2
    head_memory: str = "4Gi"
    token_secret: str = "varipipe-token"
    namespace: str = ""
    gpus_per_worker: int = 1  # GPUs of one GPU worker pod (replicas of GPU stages run there)


def serve_config_v2(opts: AppOptions, decision: Decision) -> dict[str, Any]:
    """The Serve declarative config (``ServeDeploySchema`` shape) for ``decision``."""
    app = build_app_config(replace(opts, auth_token=""), decision, generation=0)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": [app],
    }


def _cpus(spec: PipelineSpec, stage: str, stage_num_cpus: float | None) -> float:
    return stage_num_cpus if stage_num_cpus is not None else spec.stage(stage).num_cpus


def worker_replicas(spec: PipelineSpec, decision: Decision, worker_cpus: int,
                    stage_num_cpus: float | None = None, gpu_stages: frozenset[str] = frozenset()) -> int:
    """CPU worker pods whose CPUs hold every replica of the decision outside ``gpu_stages`` (at least one)."""
    need = LIGHT_CPUS + sum(s.replicas * _cpus(spec, s.stage, stage_num_cpus)
                            for s in decision.stages if s.stage not in gpu_stages)
    return max(1, math.ceil(need / worker_cpus))


def gpu_worker_replicas(spec: PipelineSpec, decision: Decision, stage_gpus: dict[str, float], shape: ClusterShape,
                        stage_num_cpus: float | None = None) -> int:
    """GPU worker pods whose GPUs (and CPUs) hold every replica of the stages in ``stage_gpus``; 0 if none."""
    on_gpu = [s for s in decision.stages if stage_gpus.get(s.stage, 0) > 0]
    if not on_gpu:
        return 0
    gpus = sum(s.replicas * stage_gpus[s.stage] for s in on_gpu)
    cpus = sum(s.replicas * _cpus(spec, s.stage, stage_num_cpus) for s in on_gpu)
    return max(1, math.ceil(gpus / shape.gpus_per_worker - 1e-9), math.ceil(cpus / shape.worker_cpus))


def _container(name: str, shape: ClusterShape, cpus: int, memory: str, ports: list[dict],
               gpus: int = 0) -> dict[str, Any]:
    res = {"cpu": str(cpus), "memory": memory}
    if gpus:
        res[GPU_RESOURCE] = str(gpus)
    return {
        "name": name,
        "image": shape.image,
        "resources": {"requests": dict(res), "limits": dict(res)},
        "ports": ports,
        "env": [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {
            "name": shape.token_secret, "key": TOKEN_SECRET_KEY}}},
                # Serve's proxy and the ingress at nice 0, ahead of the stage replicas (serve_config).
                {"name": WORKER_NICENESS_ENV, "value": str(WORKER_NICENESS)}],
    }


def _head(shape: ClusterShape) -> dict[str, Any]:
    ports = [{"name": "gcs", "containerPort": GCS_PORT}, {"name": "dashboard", "containerPort": DASHBOARD_PORT},
             {"name": "client", "containerPort": CLIENT_PORT}, {"name": "serve", "containerPort": SERVE_PORT},
             {"name": "metrics", "containerPort": METRICS_PORT}]
    return {
        # num-cpus 0: replicas go to the workers; the head runs GCS, Serve's controller, a proxy.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "metrics-export-port": str(METRICS_PORT)},
        "template": {"spec": {"containers": [_container("ray-head", shape, shape.head_cpus, shape.head_memory,
                                                        ports)]}},
    }


def _workers(shape: ClusterShape, replicas: int, gpu_replicas: int = 0) -> list[dict[str, Any]]:
    ports = [{"name": "serve", "containerPort": SERVE_PORT}, {"name": "metrics", "containerPort": METRICS_PORT}]
    groups = [{
        "groupName": "cpu-workers",
        "replicas": replicas,
        "minReplicas": 1,
        "maxReplicas": replicas * MAX_WORKER_FACTOR,
        # num-gpus 0: a replica that asks for a GPU can only land on a gpu-workers pod.
        "rayStartParams": {"num-cpus": str(shape.worker_cpus), "num-gpus": "0",
                           "metrics-export-port": str(METRICS_PORT)},
        "template": {"spec": {"containers": [_container("ray-worker", shape, shape.worker_cpus,
                                                        shape.worker_memory, ports)]}},
    }]
    if gpu_replicas:
        groups.append({
            "groupName": "gpu-workers",
            "replicas": gpu_replicas,
            "minReplicas": 1,
            "maxReplicas": gpu_replicas * MAX_WORKER_FACTOR,
            "rayStartParams": {"num-cpus": str(shape.worker_cpus), "num-gpus": str(shape.gpus_per_worker),
                               "metrics-export-port": str(METRICS_PORT)},
            "template": {"spec": {"containers": [_container("ray-gpu-worker", shape, shape.worker_cpus,
                                                            shape.worker_memory, ports, shape.gpus_per_worker)]}},
        })
    return groups


def render_rayservice(spec: PipelineSpec, opts: AppOptions, decision: Decision,
                      shape: ClusterShape | None = None) -> dict[str, Any]:
    """The RayService object (a dict; ``yaml.safe_dump`` it) serving ``decision``."""
    shape = shape or ClusterShape()
    metadata: dict[str, Any] = {"name": f"varipipe-{spec.name}",
                                "labels": {"app.kubernetes.io/name": "varipipe", "varipipe/pipeline": spec.name}}
    if shape.namespace:
        metadata["namespace"] = shape.namespace
    serve_yaml = yaml.safe_dump(serve_config_v2(opts, decision), sort_keys=False)
    gpu_stages = frozenset(k for k, v in opts.stage_gpus.items() if v > 0)
    workers = worker_replicas(spec, decision, shape.worker_cpus, opts.stage_num_cpus, gpu_stages)
    gpu_workers = gpu_worker_replicas(spec, decision, opts.stage_gpus, shape, opts.stage_num_cpus)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "serveConfigV2": serve_yaml,
            "rayClusterConfig": {
                "rayVersion": shape.ray_version,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": _head(shape),
                "workerGroupSpecs": _workers(shape, workers, gpu_workers),
            },
        },
    }


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as ``|`` blocks, as people write them by hand."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def to_yaml(manifest: dict[str, Any]) -> str:
    return yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False)
