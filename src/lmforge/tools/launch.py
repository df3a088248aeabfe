"""Several processes (GPUs, or CPU processes with gloo) and several machines, through ``accelerate launch``.

    lmforge train CONFIG --num-processes 4                          # DDP on this machine
    lmforge train CONFIG --num-processes 8 --accelerate-config examples/accelerate/fsdp.yaml
    accelerate launch --num_processes 4 -m lmforge.cli train CONFIG    # the same, by hand

lmforge builds nothing of its own here: ``--num-processes`` runs accelerate's launcher (torchrun
underneath), and the same ``lmforge train`` runs in every process. Inside, the main process
alone writes the run folder (logs, checkpoints, reports, trackers); each process trains on its
own share of the batches (``data.batching.shard``); the loss is normalised over the items of
all processes, so N processes x batch B/N follow the loss curve of one process with batch B.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from ..errors import LmforgeError


def inside_launcher() -> bool:
    """True in a process started by accelerate launch / torchrun (it must not launch again)."""
    return any(v in os.environ for v in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(train_args: list[str], num_processes: Optional[int], config_file: Optional[str] = None,
                       debug: bool = False) -> list[str]:
    """The ``accelerate launch ... -m lmforge.cli train ...`` command line."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file:
        if not Path(config_file).is_file():
            raise LmforgeError(f"accelerate config file not found: {config_file}",
                               "see examples/accelerate/ for DDP, FSDP and DeepSpeed configs")
        cmd += ["--config_file", str(config_file)]
        if num_processes:
            cmd += ["--num_processes", str(num_processes)]
    else:
        if not num_processes or num_processes < 2:
            raise LmforgeError(f"--num-processes must be at least 2 to launch, got {num_processes}")
        if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
            raise LmforgeError(f"--num-processes {num_processes} is more than the {torch.cuda.device_count()} GPUs here",
                               "use at most one process per GPU (several machines: see the README)")
        # On a CPU-only machine the same launcher runs N CPU processes that talk over gloo.
        cmd += ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
                "--dynamo_backend", "no", "--main_process_port", str(free_port())]
        if not torch.cuda.is_available():
            cmd += ["--mixed_precision", "no"]
    cmd += ["-m", "lmforge.cli"] + (["--debug"] if debug else []) + ["train"] + list(train_args)
    return cmd


def launch(train_args: list[str], num_processes: Optional[int], config_file: Optional[str] = None,
           debug: bool = False, env: Optional[dict] = None) -> int:
    """Run ``lmforge train`` under accelerate launch; returns its exit code."""
    cmd = accelerate_command(train_args, num_processes, config_file, debug)
    run_env = dict(os.environ if env is None else env)
    if not torch.cuda.is_available():
        # N processes on a few cores: one thread each unless told otherwise (oversubscription is slow).
        cores = os.cpu_count() or 1
        run_env.setdefault("OMP_NUM_THREADS", str(max(1, cores // max(1, num_processes or 1))))
    try:
        return subprocess.run(cmd, env=run_env).returncode
    except KeyboardInterrupt:
        return 130
