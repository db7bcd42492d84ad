"""The Ray flags of ``rlaif generate`` and ``rlaif label`` (chunks on N engine replicas)."""

from __future__ import annotations

import argparse


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", dest="ray.address", nargs="?", const="local", metavar="ADDRESS",
                   help="run chunks on Ray engine replicas: alone, the cluster of RAY_ADDRESS or a new local one; "
                        "'auto' (the cluster on this machine) or HOST:PORT / ray://HOST:PORT")
    p.add_argument("--replicas", dest="ray.replicas", type=int, help="with --ray: engine replicas (default 2)")
    p.add_argument("--cpus-per-replica", dest="ray.cpus_per_replica", type=float, help="with --ray: CPUs each replica reserves (default 1)")
    p.add_argument("--gpus-per-replica", dest="ray.gpus_per_replica", type=float,
                   help="with --ray: GPUs each replica reserves (default: 1 for vllm/transformers on a cluster with GPUs, "
                        "else 0); vLLM runs tensor-parallel over more than 1")
    p.add_argument("--lease-timeout", dest="ray.lease_timeout_s", type=float,
                   help="with --ray: seconds before a chunk not returned is leased to another replica (default: only when its replica dies)")


def ray_config(args: argparse.Namespace):
    """The :class:`rlaif.pipeline.distributed.RayConfig` of a command whose settings are its flags (``rlaif label``)."""
    from rlaif.pipeline.distributed import RayConfig

    values = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("ray.") and v is not None}
    return RayConfig(**values)


def tensor_parallel(ray_cfg) -> int:
    """vLLM's tensor-parallel size for a replica that reserves ``gpus_per_replica`` GPUs."""
    gpus = ray_cfg.gpus_per_replica if ray_cfg is not None and ray_cfg.address else None
    return int(gpus) if gpus and gpus > 1 else 1
