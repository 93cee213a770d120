"""Device, precision and (optional) DistributedDataParallel set-up.

Under ``torchrun`` (RANK / WORLD_SIZE set, checked by ``engine.launch``) every
training command joins a process group: gloo on CPU, nccl on CUDA. Rank 0 alone
writes files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from stpcli.defaults import DEFAULT_LIF_BACKEND, DEVICES, LIF_BACKENDS, PRECISIONS
from stpcli.errors import StpError
from stpcli.files import first_line
from stpcli.launch import Launch, read_launch
from stpcli.spiking.neuron import use_lif_backend


@dataclass
class Runtime:
    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1
    compile: bool = False
    lif_backend: str = DEFAULT_LIF_BACKEND  # how this process runs its LIF neurons (defaults.LIF_BACKENDS)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_rank(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, True on every rank if any rank raised it (stop requests, NaN); one all-reduce."""
        if not self.distributed:
            return flags
        value = torch.tensor([1.0 if f else 0.0 for f in flags], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return tuple(bool(v > 0) for v in value.tolist())


def check_runtime_options(device: str, precision: str, lif_backend: str = DEFAULT_LIF_BACKEND) -> None:
    """--device, --precision and --lif-backend, checked without starting anything: a backend this
    machine cannot run is refused here, never replaced by another."""
    if device not in DEVICES:
        raise StpError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision not in PRECISIONS:
        raise StpError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if lif_backend not in LIF_BACKENDS:
        raise StpError(f"--lif-backend must be one of {', '.join(LIF_BACKENDS)}, got {lif_backend!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise StpError("--device cuda was asked for, but no CUDA device is available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if lif_backend == "triton" and not (use_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise StpError("--lif-backend triton runs on CUDA (or on the CPU under TRITON_INTERPRET=1, for tests); "
                       "use --lif-backend torch or inductor on the CPU")
    if lif_backend == "inductor" and not use_cuda and not any(map(shutil.which, ("g++", "c++", "clang++"))):
        raise StpError("--lif-backend inductor compiles C++ on the CPU and no C++ compiler was found "
                       "(g++, c++ or clang++); install one or use --lif-backend torch")


def setup_runtime(device: str = "auto", precision: str = "fp32", compile: bool = False,
                  lif_backend: str = DEFAULT_LIF_BACKEND) -> Runtime:
    check_runtime_options(device, precision, lif_backend)
    use_lif_backend(lif_backend)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    launch = read_launch()
    if launch.distributed and not dist.is_initialized():
        try:
            store = rendezvous(launch)
        except KeyboardInterrupt:
            raise StpError(f"interrupted while waiting for the distributed rendezvous ({launch.describe()}); "
                           "nothing was written", exit_code=130) from None
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=store, rank=launch.rank,
                                world_size=launch.world_size)
    if use_cuda:
        local = launch.local_rank
        torch.cuda.set_device(local)
        torch_device = torch.device("cuda", local)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch_device = torch.device("cpu")
    return Runtime(torch_device, precision, launch.rank, launch.world_size, compile, lif_backend)


def rendezvous(launch: Launch):
    """Meet the other processes of ``launch`` through a TCPStore at MASTER_ADDR:MASTER_PORT, in
    steps of at most a second so that Ctrl-C and SIGTERM are handled while waiting (a blocking
    C++ wait holds off Python's signal handlers), and for at most ``launch.rendezvous_timeout``.
    A wait longer than a second says once, on standard error, what it waits for."""
    started = time.monotonic()
    deadline = started + launch.rendezvous_timeout
    announced = False

    def waiting(what: str) -> None:
        nonlocal announced
        if not announced and time.monotonic() - started >= 1.0:
            announced = True
            print(f"waiting for {what} ({launch.describe()}; up to {launch.rendezvous_timeout:g} s, Ctrl-C stops)",
                  file=sys.stderr, flush=True)
    agent = (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("MASTER_ADDR") == launch.master_addr
             and os.environ.get("MASTER_PORT") == str(launch.master_port))  # torchrun's agent hosts the store
    serve = launch.rank == 0 and not agent

    def expired(reason: str) -> StpError:
        return StpError(f"no distributed rendezvous within {launch.rendezvous_timeout:g} s ({reason}; "
                        f"{launch.describe()}): start every process with torchrun, or unset these variables "
                        "(STP_RENDEZVOUS_TIMEOUT sets the wait)")

    if not serve:  # wait for rank 0's server in Python: a TCPStore client would retry (and log) in C++
        while not _listening(launch.master_addr, launch.master_port):
            if time.monotonic() >= deadline:
                raise expired("rank 0 never answered")
            waiting("rank 0 to serve the rendezvous")
            time.sleep(0.2)
    try:
        with _native_stderr_silenced():  # its C++ retries log a 50-line stack each; the error below says it in one
            store = dist.TCPStore(launch.master_addr, launch.master_port, launch.world_size, serve,
                                  timeout=timedelta(seconds=max(1.0, deadline - time.monotonic())), wait_for_workers=False)
    except (RuntimeError, OSError) as exc:  # DistNetworkError / DistStoreError: a port in use, a host unknown
        raise StpError(f"cannot {'serve' if serve else 'join'} the rendezvous at {launch.master_addr}:"
                       f"{launch.master_port} ({first_line(exc, 120)}; {launch.describe()})") from None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(f"stp/attempt_{attempt}", store)
    prefixed.add("joined", 1)
    while (joined := prefixed.add("joined", 0)) < launch.world_size:
        if time.monotonic() >= deadline:
            raise expired(f"{joined} of {launch.world_size} processes joined")
        waiting(f"{launch.world_size - joined} more process(es) to join the rendezvous")
        time.sleep(0.1)
    store.set_timeout(timedelta(minutes=30))  # training steps and rank 0's checkpoint writes take their time
    return prefixed


@contextlib.contextmanager
def _native_stderr_silenced():
    """Standard error's file descriptor pointed at /dev/null for the duration (C++ code writes to it
    directly, past Python's sys.stderr), then restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False

