import pytest
import torch

from seqbert.training.precision import (
    autocast,
    cpu_has_native_bf16,
    grad_scaler,
    resolve_device,
    resolve_precision,
)

CPU = torch.device("cpu")
# /proc/cpuinfo excerpts: an AVX2-only AMD EPYC (no native bf16) and a Sapphire Rapids Xeon (AMX)
AVX2_ONLY = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2\n"
WITH_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n"


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text: str):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return path

    return write


def test_auto_is_fp32_on_a_cpu_without_native_bf16(cpuinfo):
    assert not cpu_has_native_bf16(cpuinfo(AVX2_ONLY))
    assert resolve_precision("auto", CPU, cpuinfo(AVX2_ONLY)) == "fp32"


def test_auto_is_bf16_on_a_cpu_with_native_bf16(cpuinfo):
    assert cpu_has_native_bf16(cpuinfo(WITH_AMX))
    assert resolve_precision("auto", CPU, cpuinfo(WITH_AMX)) == "bf16"


def test_auto_on_this_machine_follows_its_cpu_flags():
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", CPU) == expected


def test_missing_cpuinfo_means_no_bf16(tmp_path):
    assert not cpu_has_native_bf16(tmp_path / "absent")


def test_explicit_choices_and_errors():
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"  # asked for explicitly: allowed, even if slow
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", CPU)


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu:0:1")


def test_autocast_and_scaler():
    x = torch.randn(3, 4)
    w = torch.randn(4, 2)
    with autocast(CPU, "fp32"):
        assert (x @ w).dtype == torch.float32
    with autocast(CPU, "bf16"):
        assert (x @ w).dtype == torch.bfloat16
    assert not grad_scaler(CPU, "fp32").is_enabled()
