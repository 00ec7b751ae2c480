from __future__ import annotations

from gptossctl.hardware.requirements import GIB, KNOWN_MODELS, kv_cache_bytes, memory_need


def test_kv_per_token_matches_the_field_reference() -> None:
    # 2 KiB per token per full-attention layer; half the layers are 128-token sliding windows.
    for name, kib in (("gpt-oss-120b", 36), ("gpt-oss-20b", 24)):
        m = KNOWN_MODELS[name]
        long = kv_cache_bytes(m, context_len=100_000, concurrency=1, dtype_bytes=2)
        longer = kv_cache_bytes(m, context_len=100_001, concurrency=1, dtype_bytes=2)
        assert longer - long == kib * 1024


def test_sliding_layers_do_not_grow_with_context_and_fp8_halves() -> None:
    m = KNOWN_MODELS["gpt-oss-20b"]
    short = kv_cache_bytes(m, context_len=64, concurrency=1, dtype_bytes=2)
    assert short == (12 * 64 + 12 * 64) * 2048
    assert kv_cache_bytes(m, context_len=4096, concurrency=3, dtype_bytes=1) * 2 == \
        kv_cache_bytes(m, context_len=4096, concurrency=3, dtype_bytes=2)


def test_tensor_parallel_splits_weights_and_kv_not_overhead() -> None:
    m = KNOWN_MODELS["gpt-oss-120b"]
    one = memory_need(m, memory_mib=46068, utilization=0.92, context_len=131072, concurrency=1,
                      kv_dtype_bytes=2, overhead_bytes=2 * GIB)
    two = memory_need(m, memory_mib=46068, utilization=0.92, context_len=131072, concurrency=1,
                      kv_dtype_bytes=2, overhead_bytes=2 * GIB, tensor_parallel=2)
    assert not one.fits and two.fits
    assert two.weights * 2 >= m.weights_bytes and two.overhead == one.overhead
