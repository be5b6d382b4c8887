"""What every ``python -m vlp bench <name>`` shares: its options, the command line and the CPU its report
names, and where the report goes."""

from __future__ import annotations

import platform
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import torch

Config = TypeVar("Config")


def parse_options(
    name: str,
    config_type: type[Config],
    description: str | None,
    argv: Sequence[str],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    set_threads: bool = False,
) -> tuple[Config, Any]:
    """The options of ``python -m vlp bench <name>``: the fields of the dataclass ``config_type``, the
    ``extra`` options (flag → ``add_argument`` keywords) and ``--out``. Returns the config and the parsed
    namespace (``out`` and the extra options). With ``set_threads``, the config's ``threads`` (when not
    ``None``) becomes this process's torch thread count."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=f"python -m vlp bench {name}", description=description)
    parser.add_class_arguments(config_type, as_group=False)
    for flag, keywords in (extra or {}).items():
        parser.add_argument(flag, **keywords)
    parser.add_argument("--out", type=str | None, default=None, help="also write the markdown section here")
    args = parser.parse_args(list(argv))
    values = args.as_dict()
    config = config_type(**{f.name: values[f.name] for f in fields(config_type)})
    if set_threads and config.threads is not None:
        torch.set_num_threads(config.threads)
    return config, args


def command_line(name: str, argv: Sequence[str]) -> str:
    """The command a report names: ``python -m vlp bench <name>`` with its options as given."""
    return shlex.join(["python", "-m", "vlp", "bench", name, *argv])


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), or the machine type where that does not exist."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def cpu_features() -> str:
    """The instruction sets the CPU kernels of this run can use, for a report's header.

    ATen's vector level (``torch.backends.cpu.get_cpu_capability``: what its own fp32 and bf16 kernels were
    built for) and the CPU's bf16 units: AVX-512 bf16 (dot products of bf16 pairs) and AMX tiles (oneDNN
    runs bf16 matmuls on them when present). A bf16 figure means little without the last two.
    """
    units = [
        name
        for name, probe in (("AVX-512 bf16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
        if getattr(torch.cpu, probe, lambda: False)()
    ]
    bf16 = " + ".join(units) if units else "none (bf16 is emulated in fp32 units)"
    return f"ATen vector ISA {torch.backends.cpu.get_cpu_capability()}, bf16 units: {bf16}"


def publish(section: str, out: str | None) -> None:
    """Write the markdown ``section`` to ``out`` (when given), then print it."""
    if out:
        Path(out).write_text(section + "\n")
    print(section, flush=True)
