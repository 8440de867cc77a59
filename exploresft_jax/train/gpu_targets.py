"""NVIDIA GPUs as compile-only targets: XLA's GPU compiler run on any host, without a GPU.

With the CUDA plugin installed (`pip install -e ".[gpu-compile]"`: jax-cuda13-plugin / -pjrt and cuDNN, about
650 MB; or the full `jax[cuda13]`) and `JAX_PLATFORMS=cpu`,
`jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=<GpuTargetConfigProto text>,
topology="1x1xN")` gives N devices of one host of that GPU; a jitted program lowered on `ShapeDtypeStruct`s placed
on them compiles for it ("deviceless compilation": cuDNN fused attention and Pallas Triton kernels included) and
`compiled.memory_analysis()` reports bytes per GPU. Unlike the TPU compiler, the GPU compiler does not refuse a
program larger than the card, so the caller compares the figure with `GpuSpec.budget_bytes` itself.

The target descriptions are written here from each card's published properties (`GpuSpec`), not copied from a
GPU: streaming multiprocessors, memory, bandwidth, L2, clock, shared memory and registers per SM.
"""

from __future__ import annotations

import dataclasses
import importlib.util

# What to install when the plugin is missing (the versions jax 0.10.2 pins).
CUDA_PLUGIN_INSTALL = ("pip install -e \".[gpu-compile]\" (jax-cuda13-plugin==0.10.2, jax-cuda13-pjrt==0.10.2, "
                       "nvidia-cudnn-cu13), or pip install \"jax[cuda13]==0.10.2\"")
# Per-compile options for a deviceless GPU compile: without a GPU XLA has no CUB scratch sizes for a radix sort
# (the sampler's top-p sort) and would ask the CUDA runtime for one; XLA's own sort has the same memory figures.
DEVICELESS_COMPILER_OPTIONS = {"xla_gpu_enable_cub_radix_sort": False}


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """One GPU model's published properties (SXM parts).

    name: the device kind XLA reports; compute_capability: (major, minor); sms: streaming multiprocessors;
    memory_bytes: HBM as the driver reports it; budget_bytes: what a program may use (the marketed capacity in
    decimal GB: the CUDA context, cuDNN / cuBLAS workspaces and allocator slack take the difference);
    bandwidth: HBM bytes / s; l2_bytes; clock_ghz: boost clock; smem_per_sm / smem_per_block: shared memory per
    SM and the largest opt-in per block (bytes); regs_per_sm: 32-bit registers.
    """

    name: str
    compute_capability: tuple[int, int]
    sms: int
    memory_bytes: int
    budget_bytes: float
    bandwidth: float
    l2_bytes: int
    clock_ghz: float
    smem_per_sm: int
    smem_per_block: int
    regs_per_sm: int = 65536
    cudnn_version: tuple[int, int, int] = (9, 10, 0)

    def target_config(self) -> str:
        """The GpuTargetConfigProto (text format) that `get_topology_desc(platform="cuda")` takes."""
        major, minor = self.compute_capability
        info = {
            "threads_per_block_limit": 1024, "threads_per_warp": 32, "shared_memory_per_block": 48 * 1024,
            "shared_memory_per_core": self.smem_per_sm, "threads_per_core_limit": 2048, "core_count": self.sms,
            "fpus_per_core": 128, "block_dim_limit_x": 2 ** 31 - 1, "block_dim_limit_y": 65535,
            "block_dim_limit_z": 65535, "memory_bandwidth": int(self.bandwidth), "l2_cache_size": self.l2_bytes,
            "clock_rate_ghz": self.clock_ghz, "device_memory_size": self.memory_bytes,
            "shared_memory_per_block_optin": self.smem_per_block, "registers_per_core_limit": self.regs_per_sm,
            "registers_per_block_limit": self.regs_per_sm,
        }
        body = "\n".join(f"  {k}: {v}" for k, v in info.items())
        cc = f"  cuda_compute_capability {{ major: {major} minor: {minor} }}"
        dnn = " ".join(f"{k}: {v}" for k, v in zip(("major", "minor", "patch"), self.cudnn_version))
        return (f"gpu_device_info {{\n{body}\n{cc}\n}}\nplatform_name: \"CUDA\"\n"
                f"dnn_version_info {{ {dnn} }}\ndevice_description_str: \"{self.name}\"\n")


GB = 1e9
# NVIDIA's data sheets: H100 SXM5 (Hopper, 132 SMs, 80 GB HBM3 at 3.35 TB/s, 50 MB L2, 1.98 GHz boost, 228 KB
# shared memory per SM of which 227 KB per block) and H200 SXM (the same chip with 141 GB HBM3e at 4.8 TB/s).
GPUS = {
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 132, 81559 * 2 ** 20, 80 * GB, 3.35e12, 50 * 2 ** 20, 1.98,
                    228 * 1024, 227 * 1024),
    "h200": GpuSpec("NVIDIA H200", (9, 0), 132, 143771 * 2 ** 20, 141 * GB, 4.8e12, 50 * 2 ** 20, 1.98,
                    228 * 1024, 227 * 1024),
}


def parse(name: str) -> tuple[GpuSpec, int] | None:
    """('h100' | 'h200' | '8xh100' | '<n>xh200') -> (spec, GPUs in the host); None for a name that is not a GPU."""
    count, _, card = name.lower().rpartition("x") if "x" in name.lower() else ("1", "", name.lower())
    if card not in GPUS or not count.isdigit() or int(count) < 1:
        return None
    return GPUS[card], int(count)


def plugin_installed() -> bool:
    """True when a CUDA PJRT plugin for jax is importable (deviceless compiles need it, not a GPU)."""
    return any(importlib.util.find_spec(f"jax_plugins.{m}") is not None for m in ("xla_cuda13", "xla_cuda12"))


def devices(spec: GpuSpec, count: int) -> list:
    """`count` compile-only devices of one host of `spec` GPUs."""
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(platform="cuda", target_config=spec.target_config(),
                                             topology=f"1x1x{count}").devices)
