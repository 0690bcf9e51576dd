"""The machine description every record carries."""

from vicc_fast.bench.common import cpu_description

CPUINFO = """processor\t: 0
model name\t: Example CPU 9000
flags\t\t: fpu sse sse2 sse4_2 avx avx2 fma

processor\t: 1
model name\t: Example CPU 9000
flags\t\t: fpu sse sse2 sse4_2 avx avx2 fma
"""


def test_cpu_description_names_the_model_and_widest_vector_extension():
    assert cpu_description(CPUINFO) == {"cpu_model": "Example CPU 9000", "cpu_simd": "avx2"}
    no_avx = CPUINFO.replace(" avx avx2", "")
    assert cpu_description(no_avx)["cpu_simd"] == "sse4_2"
