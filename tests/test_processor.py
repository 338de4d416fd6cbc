"""Rows, provenance records and benchmark reports name the processor: vendor and model, bf16 path, threads."""

import torch

from promptmem.processor import parse_cpuinfo, this_processor
from promptmem.rows import device_file_stem, device_name

# The first lines of /proc/cpuinfo on the two processors of CI's kind (flags shortened to what matters here)
INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
vendor_id\t: GenuineIntel
"""
AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R45 96-Core Processor
flags\t\t: fpu avx2 avx512f avx512_bf16
"""


def test_cpuinfo_gives_vendor_model_and_bf16_path():
    intel, amd = parse_cpuinfo(INTEL), parse_cpuinfo(AMD)
    assert (intel.vendor, intel.model, intel.bf16_path, intel.vector_isa) == ("Intel", "Intel Xeon Processor", "AMX",
                                                                              "amx")
    assert (amd.vendor, amd.bf16_path, amd.vector_isa) == ("AMD", "AVX512-BF16", "avx512")
    assert intel.describe(2) == "Intel Xeon Processor, bf16 AMX, 2 threads"
    assert amd.describe(1) == "AMD EPYC 9R45 96-Core Processor, bf16 AVX512-BF16, 1 threads"
    plain = parse_cpuinfo("vendor_id\t: SomeVendor\nmodel name\t: Chip 7\nflags\t: sse2 avx2\n")
    assert plain.describe(4) == "SomeVendor Chip 7, bf16 none, 4 threads" and plain.vector_isa == "avx2"


def test_two_processors_get_two_report_files():
    stems = {device_file_stem(f"cpu ({parse_cpuinfo(text).describe(2)})") for text in (INTEL, AMD)}
    assert stems == {"cpu-intel-xeon-processor-bf16-amx-2-threads",
                     "cpu-amd-epyc-9r45-96-core-processor-bf16-avx512-bf16-2-threads"}


def test_a_cpu_device_is_named_after_this_processor():
    name = device_name(torch.device("cpu"))
    assert name == f"cpu ({this_processor().describe(torch.get_num_threads())})"
    assert f"bf16 {this_processor().bf16_path}," in name
