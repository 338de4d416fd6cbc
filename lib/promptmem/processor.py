"""Which processor computed something: vendor and model, its bf16 matmul path and its widest vector instruction set,
read from the kernel's /proc/cpuinfo (elsewhere, from what `platform` knows). Rows, provenance records and benchmark
reports name it, since the same code runs at 0.6 TFLOP/s on one host of CI's kind and 2.4 on another."""

from __future__ import annotations

import dataclasses
import platform
import re
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}  # cpuinfo's vendor_id -> a name
# cpuinfo's flags of the bf16 matmul paths, fastest first: Intel's tile unit, then AVX-512's bf16 dot products
BF16_PATHS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))


@dataclasses.dataclass(frozen=True)
class Processor:
    vendor: str  # "Intel", "AMD", cpuinfo's vendor_id where unknown, or "" where there is none
    model: str  # the model name without trademark signs: "Intel Xeon Processor", "AMD EPYC 9R45 96-Core Processor"
    flags: frozenset[str]

    @property
    def bf16_path(self) -> str:
        """'AMX', 'AVX512-BF16' or 'none': how bf16 matmuls are computed here."""
        return next((path for flag, path in BF16_PATHS if flag in self.flags), "none")

    @property
    def vector_isa(self) -> str:
        """The widest instruction set for matmuls: 'amx', 'avx512', 'avx2' or 'older'."""
        for flag, isa in (("amx_bf16", "amx"), ("avx512f", "avx512"), ("avx2", "avx2")):
            if flag in self.flags:
                return isa
        return "older"

    def describe(self, threads: int) -> str:
        """'Intel Xeon Processor, bf16 AMX, 2 threads'."""
        name = self.model if self.model.lower().startswith(self.vendor.lower()) else f"{self.vendor} {self.model}"
        return f"{name.strip()}, bf16 {self.bf16_path}, {threads} threads"


def parse_cpuinfo(text: str) -> Processor:
    """The first processor block of a /proc/cpuinfo text."""
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    vendor = fields.get("vendor_id", "")
    model = re.sub(r"\s+", " ", re.sub(r"\((R|TM|tm)\)", "", fields.get("model name", ""))).strip()
    return Processor(VENDORS.get(vendor, vendor), model or platform.machine(), frozenset(fields.get("flags", "").split()))


def this_processor() -> Processor:
    """This machine's processor."""
    if CPUINFO.exists():
        return parse_cpuinfo(CPUINFO.read_text())
    return Processor("", platform.processor() or platform.machine(), frozenset())
