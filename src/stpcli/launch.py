"""What a launcher (torchrun) tells a process, read and checked before any rendezvous.

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. The same
variables left over in a shell (``export RANK=1`` from an earlier job) or mistyped
must not turn a plain command into a frozen one or an ``unexpected`` error: they are
validated here, and a rendezvous that nobody joins ends after
``STP_RENDEZVOUS_TIMEOUT`` seconds (default 20) with a message naming the variables,
and can be stopped by Ctrl-C or SIGTERM while it waits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from stpcli.errors import StpError

MAX_WORLD_SIZE = 65_536
DEFAULT_RENDEZVOUS_TIMEOUT = 20.0
HINT = "left over from an earlier torchrun? unset it, or start stp with torchrun"


@dataclass(frozen=True)
class Launch:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    master_addr: str = ""  # set when distributed
    master_port: int = 0
    rendezvous_timeout: float = DEFAULT_RENDEZVOUS_TIMEOUT

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return (f"WORLD_SIZE={self.world_size} RANK={self.rank} MASTER_ADDR={self.master_addr} "
                f"MASTER_PORT={self.master_port}")


def _integer(environ: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    text = environ.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise StpError(f"the environment variable {name}={text[:40]!r} is not an integer ({HINT})") from None
    if not low <= value <= high:
        raise StpError(f"the environment variable {name}={value} must lie in {low}..{high} ({HINT})")
    return value


def read_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """The launch this process is part of, or a one-line error naming the variable that is wrong."""
    env = os.environ if environ is None else environ
    world_size = _integer(env, "WORLD_SIZE", 1, MAX_WORLD_SIZE) or 1
    rank = _integer(env, "RANK", 0, MAX_WORLD_SIZE - 1)
    local_rank = _integer(env, "LOCAL_RANK", 0, MAX_WORLD_SIZE - 1)
    timeout_text = env.get("STP_RENDEZVOUS_TIMEOUT", "").strip()
    try:
        timeout = float(timeout_text) if timeout_text else DEFAULT_RENDEZVOUS_TIMEOUT
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= 86_400:
        raise StpError(f"STP_RENDEZVOUS_TIMEOUT={timeout_text!r} must be a number of seconds in (0, 86400]")
    if world_size == 1:
        if rank:
            raise StpError(f"the environment variable RANK={rank} is set but WORLD_SIZE is not ({HINT})")
        return Launch(rendezvous_timeout=timeout)
    if rank is None:
        raise StpError(f"WORLD_SIZE={world_size} is set but RANK is not ({HINT})")
    if rank >= world_size:
        raise StpError(f"RANK={rank} must be below WORLD_SIZE={world_size} ({HINT})")
    addr = env.get("MASTER_ADDR", "").strip()
    port = _integer(env, "MASTER_PORT", 1, 65_535)
    missing = [name for name, value in (("MASTER_ADDR", addr), ("MASTER_PORT", port)) if not value]
    if missing:
        raise StpError(f"WORLD_SIZE={world_size} is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                       f"not ({HINT})")
    assert port is not None
    return Launch(world_size, rank, local_rank or 0, addr, port, timeout)
