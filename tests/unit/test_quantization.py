"""--quantization and checkpoint quantization_config forms -> QuantConfig (torch-free)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pagedllm.quantization import (
    Fp8Scheme,
    QuantConfig,
    resolve_kv_cache_dtype,
    resolve_quantization,
)

QKV = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
       "model.layers.0.self_attn.v_proj"]  # fmt: skip
DOWN = ["model.layers.1.mlp.down_proj"]


def config(quantization_config: dict | None = None) -> SimpleNamespace:
    if quantization_config is None:
        return SimpleNamespace()
    return SimpleNamespace(quantization_config=quantization_config)


def fp8_group(weights: str = "channel", inputs: dict | None = None) -> dict:
    return {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": weights, "symmetric": True,
                    "dynamic": False},
        "input_activations": inputs,
    }  # fmt: skip


def compressed(*groups: dict, **extra) -> dict:
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "config_groups": {f"group_{i}": g for i, g in enumerate(groups)},
        **extra,
    }


DYNAMIC = {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}
STATIC = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False}


def test_no_quantization_unless_asked():
    assert resolve_quantization(None, config()) is None


def test_online_fp8_quantizes_every_linear_dynamically():
    quant = resolve_quantization("fp8", config())
    assert quant == QuantConfig.online_fp8()
    assert quant.scheme_for(QKV) == Fp8Scheme(serialized=False, activations="dynamic")


def test_fp8_checkpoint_is_read_without_the_flag_and_with_it():
    declared = {"quant_method": "fp8", "activation_scheme": "static",
                "ignored_layers": ["model.layers.1.mlp.down_proj"]}  # fmt: skip
    for requested in (None, "fp8"):
        quant = resolve_quantization(requested, config(declared))
        assert quant.scheme_for(QKV) == Fp8Scheme(serialized=True, activations="static")
        assert quant.scheme_for(DOWN) is None


def test_modules_to_not_convert_is_the_other_spelling_of_ignored_layers():
    declared = {"quant_method": "fp8", "modules_to_not_convert": ["model.layers.1.mlp.down_proj"]}
    quant = resolve_quantization(None, config(declared))
    assert quant.scheme_for(DOWN) is None
    assert quant.scheme_for(QKV) == Fp8Scheme(serialized=True, activations="dynamic")


def test_block_wise_fp8_is_refused():
    declared = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    with pytest.raises(ValueError, match="Block-wise"):
        resolve_quantization(None, config(declared))


@pytest.mark.parametrize(
    "inputs, activations", [(DYNAMIC, "dynamic"), (STATIC, "static"), (None, "none")]
)
def test_compressed_tensors_schemes(inputs, activations):
    quant = resolve_quantization(None, config(compressed(fp8_group("tensor", inputs))))
    assert quant.method == "compressed-tensors"
    assert quant.scheme_for(QKV) == Fp8Scheme(serialized=True, activations=activations)


def test_compressed_tensors_targets_and_ignore_by_regex():
    group = fp8_group(inputs=DYNAMIC) | {"targets": ["re:.*self_attn.*"]}
    quant = resolve_quantization(None, config(compressed(group, ignore=["lm_head"])))
    assert quant.scheme_for(QKV) is not None
    assert quant.scheme_for(DOWN) is None  # not targeted: stays in the model dtype
    ignoring = resolve_quantization(
        None, config(compressed(fp8_group(inputs=DYNAMIC), ignore=["re:.*down_proj$"]))
    )
    assert ignoring.scheme_for(DOWN) is None and ignoring.scheme_for(QKV) is not None


def test_merged_modules_must_share_one_scheme():
    quant = resolve_quantization(
        None, config(compressed(fp8_group(inputs=DYNAMIC), ignore=[QKV[1]]))
    )
    with pytest.raises(ValueError, match="differently"):
        quant.scheme_for(QKV)


@pytest.mark.parametrize(
    "group, pattern",
    [
        (fp8_group("block"), "'tensor' or 'channel'"),
        (fp8_group("group"), "'tensor' or 'channel'"),
        (fp8_group() | {"weights": {"num_bits": 4, "type": "int", "strategy": "group"}},
         "8-bit float"),
        (fp8_group(inputs={"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}),
         "input_activations"),
        (fp8_group(inputs=STATIC | {"strategy": "channel"}), "per tensor"),
    ],
)  # fmt: skip
def test_compressed_tensors_schemes_not_built_are_refused(group, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_quantization(None, config(compressed(group)))


def test_compressed_tensors_other_formats_are_refused():
    declared = compressed(fp8_group()) | {"format": "pack-quantized"}
    with pytest.raises(ValueError, match="pack-quantized"):
        resolve_quantization(None, config(declared))


@pytest.mark.parametrize("method", ["awq", "gptq", "bitsandbytes", "marlin"])
def test_other_methods_are_refused_naming_ours(method):
    with pytest.raises(ValueError, match="supports fp8, compressed-tensors"):
        resolve_quantization(method, config())
    with pytest.raises(ValueError, match=f"{method}.*loads fp8, compressed-tensors"):
        resolve_quantization(None, config({"quant_method": method}))


def test_flag_and_checkpoint_must_agree():
    with pytest.raises(ValueError, match="does not match quantization='fp8'"):
        resolve_quantization("fp8", config(compressed(fp8_group(inputs=DYNAMIC))))
    with pytest.raises(ValueError, match="needs a checkpoint quantized with it"):
        resolve_quantization("compressed-tensors", config())


def test_kv_cache_dtype_spellings():
    assert resolve_kv_cache_dtype("auto", None, "bfloat16") == "auto"
    assert resolve_kv_cache_dtype("fp8", None, "bfloat16") == "fp8_e4m3"
    assert resolve_kv_cache_dtype("fp8_e4m3", None, "float32") == "fp8_e4m3"
    assert resolve_kv_cache_dtype("fp8_e5m2", None, "float32") == "fp8_e5m2"
    assert resolve_kv_cache_dtype("bfloat16", None, "bfloat16") == "auto"
    with pytest.raises(ValueError, match="differs from the model's dtype"):
        resolve_kv_cache_dtype("float16", None, "bfloat16")
    with pytest.raises(ValueError, match="fp8_inc"):
        resolve_kv_cache_dtype("fp8_inc", None, "bfloat16")


def test_checkpoint_kv_cache_scheme_makes_auto_fp8_unless_the_dtype_is_named():
    kv = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
          "symmetric": True}  # fmt: skip
    quant = resolve_quantization(
        None, config(compressed(fp8_group(inputs=DYNAMIC), kv_cache_scheme=kv))
    )
    assert resolve_kv_cache_dtype("auto", quant, "bfloat16") == "fp8_e4m3"
    assert resolve_kv_cache_dtype("bfloat16", quant, "bfloat16") == "auto"
    with pytest.raises(ValueError, match="kv_cache_scheme"):
        resolve_quantization(
            None,
            config(compressed(fp8_group(), kv_cache_scheme=kv | {"strategy": "attn_head"})),
        )
