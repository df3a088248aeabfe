"""Measurements: peak FLOP/s of the device (for MFU), peak memory."""

from __future__ import annotations

import json
import logging
import platform
import resource
import sys
import time
from typing import Optional

import torch

from ..fs import cache_dir, write_json

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by device-name substring.
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10G": 125e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def measure_cpu_peak(n: int = 2048, seconds: float = 1.0, windows: int = 5) -> float:
    """fp32 matmul FLOP/s with the current thread count: the best of a few short windows.

    Taking the best window rather than the mean keeps a probe taken while other work shares the
    cores from recording a low peak (which would inflate every later MFU on this machine)."""
    g = torch.Generator().manual_seed(0)  # never the global stream: a probe must not change a run's randomness
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    torch.mm(a, b)
    best = 0.0
    for _ in range(windows):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / windows or reps < 1:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start))
    return best


def _cpu_key() -> str:
    return f"{_cpu_name()}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def reprobe_cpu_peak() -> float:
    """Probe the CPU peak again and keep the higher of the cached and the new value. Called when a training
    window ran faster than the cached peak (MFU above 1): that peak was probed while other work shared the
    cores (1 s windows can all be busy), and every later MFU on this machine would read too high."""
    path = cache_dir() / "peak_flops.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    key = _cpu_key()
    table[key] = max(float(table.get(key, 0.0)), measure_cpu_peak())
    write_json(path, table)
    return table[key]


def device_peak_flops(device: torch.device) -> float:
    """Peak FLOP/s for MFU: a table for GPUs, a cached matmul probe for CPUs."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in GPU_PEAKS.items():
            if key in name:
                return val
        return 100e12
    key = _cpu_key()
    path = cache_dir() / "peak_flops.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = measure_cpu_peak()
        write_json(path, table)
    return float(table[key])


class Mfu:
    """Model FLOPs utilisation of a run: 6 x matmul params x tokens/s over the device's peak. A CPU peak that a
    one-process run beats (MFU above 1) was probed on busy cores: it is probed again once (reprobe_cpu_peak)."""

    def __init__(self, flop_params: int, device: torch.device, num_processes: int):
        self.flop_params, self.device, self.num_processes = flop_params, device, num_processes
        self.peak = device_peak_flops(device) * num_processes
        self.reprobed = False

    def __call__(self, tokens_per_s: float) -> Optional[float]:
        if not self.peak:
            return None
        mfu = 6 * self.flop_params * tokens_per_s / self.peak
        if mfu > 1 and not self.reprobed and self.device.type == "cpu" and self.num_processes == 1:
            self.reprobed = True
            before, self.peak = self.peak, reprobe_cpu_peak()
            logging.getLogger("lmforge").info(
                "MFU read %.2f against the cached CPU peak (%.1f GFLOP/s, probed while the cores were busy?); "
                "probed again: %.1f GFLOP/s", mfu, before / 1e9, self.peak / 1e9)
            mfu = 6 * self.flop_params * tokens_per_s / self.peak
        return mfu


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory (GPU) or peak resident memory of this process (CPU), in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def count_params(model: torch.nn.Module, trainable_only: bool = False, non_embedding: bool = False) -> int:
    total = 0
    emb = set()
    if non_embedding:
        for mod in model.modules():
            if isinstance(mod, torch.nn.Embedding):
                emb.update(id(p) for p in mod.parameters())
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        if id(p) in emb:
            continue
        total += p.numel()
    return total


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that cost 2 FLOPs per token forward: weights of linear layers (incl. a tied LM head).

    Embedding lookups cost no matmul FLOPs, so MFU = 6 * matmul_params * tokens/s / peak.
    """
    seen, total = set(), 0
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if w is None or id(w) in seen:
            continue
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D":
            seen.add(id(w))
            total += w.numel()
    return total


def task_flop_params(model: torch.nn.Module, output_layer_share: float = 1.0) -> int:
    """Matmul parameters per trained token for MFU. A task that runs its output layer only at some
    positions (masked-lm: the masked ones) counts that layer at that share of the tokens."""
    total = matmul_params(model)
    if output_layer_share < 1.0:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None and getattr(head, "weight", None) is not None:
            total -= int(round(head.weight.numel() * (1 - output_layer_share)))
    return total


_LIBC = None


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise: dynamic shapes fragment it)."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    if _LIBC is None:
        import ctypes
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)
