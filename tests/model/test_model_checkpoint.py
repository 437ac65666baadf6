"""HF checkpoint folders: load_hf (single, sharded, bf16, onto a mesh), save_hf, bad input."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec
from safetensors.numpy import load_file, save_file

from gemmascope import model

TOL = 1e-4


def logits_of(cfg, params, tokens):
    return np.asarray(jax.jit(lambda p, t: model.forward(cfg, p, t)[0])(params, tokens))


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))


def test_sharded_checkpoint_with_index_gives_hf_logits(hf_cases):
    case = hf_cases["scalar"]
    assert (case.sharded_path / "model.safetensors.index.json").is_file()
    assert len(list(case.sharded_path.glob("model-*.safetensors"))) > 1
    cfg, params = model.load_hf(case.sharded_path)
    np.testing.assert_allclose(logits_of(cfg, params, case.tokens), case.logits, atol=TOL, rtol=0)


def test_loading_onto_a_mesh_places_params_sharded(hf_cases, mesh):
    case = hf_cases["window"]  # 4 heads, 2 KV heads, d_mlp 48, vocab 64
    cfg, params = model.load_hf(case.sharded_path, mesh=mesh)
    layer = params["layers"][0]
    assert layer["q"].sharding.spec == PartitionSpec(None, "model", None)
    assert layer["o"].sharding.spec == PartitionSpec("model", None, None)
    assert layer["gate"].sharding.spec == PartitionSpec(None, "model")
    assert layer["down"].sharding.spec == PartitionSpec("model", None)
    assert params["embed"].sharding.spec == PartitionSpec("model", None)
    # 2 KV heads do not divide over 4 devices: replicated rather than padded.
    assert layer["k"].sharding.spec == PartitionSpec(None, None, None)
    assert layer["input_norm"].sharding.is_fully_replicated
    assert layer["q"].addressable_shards[0].data.shape == (32, 1, 8)
    np.testing.assert_allclose(logits_of(cfg, params, case.tokens), case.logits, atol=TOL, rtol=0)


def test_custom_rules_and_sharded_init(mesh):
    cfg = model.presets.tiny()
    rules = [("mlp", "data"), ("heads", "model"), ("vocab", None)]
    params = model.init_params(cfg, jax.random.key(0), mesh=mesh, rules=rules)
    assert params["layers"][1]["up"].sharding.spec == PartitionSpec(None, "data")
    assert params["embed"].sharding.is_fully_replicated
    assert float(jnp.abs(params["layers"][1]["post_ffw_norm"]).max()) == 0.0  # unit gain
    assert 0.015 < float(jnp.std(params["layers"][1]["up"])) < 0.025  # HF init, std 0.02
    with pytest.raises(ValueError, match="mesh axis 'tensor'"):
        model.param_shardings(cfg, mesh, rules=[("mlp", "tensor")])


def test_save_hf_writes_a_folder_transformers_loads(hf_cases, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    case = hf_cases["single_kv"]
    cfg, params = model.load_hf(case.path)
    model.save_hf(cfg, params, tmp_path / "copy")
    reloaded = transformers.Gemma2ForCausalLM.from_pretrained(
        tmp_path / "copy", attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        logits = reloaded(torch.tensor(case.tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(logits, case.logits, atol=TOL, rtol=0)
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_bf16_round_trip_through_save_and_load(hf_cases, tmp_path):
    case = hf_cases["single_kv"]
    cfg, params = model.load_hf(case.path, dtype=jnp.bfloat16)
    model.save_hf(cfg, params, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    stored = load_file(tmp_path / "model.safetensors")
    assert stored["model.embed_tokens.weight"].dtype == ml_dtypes.bfloat16
    # bf16 safetensors load exactly, to bf16 or upcast to fp32.
    _, again = model.load_hf(tmp_path, dtype=jnp.bfloat16)
    _, upcast = model.load_hf(tmp_path, dtype=jnp.float32)
    for a, b, c in zip(
        jax.tree.leaves(params), jax.tree.leaves(again), jax.tree.leaves(upcast), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(c))


def test_bf16_checkpoint_from_transformers_loads(hf_cases, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    case = hf_cases["scalar"]
    bf16_model = transformers.Gemma2ForCausalLM.from_pretrained(case.path, dtype=torch.bfloat16)
    bf16_model.save_pretrained(tmp_path)
    # The oracle: the same bf16 weights run by torch in fp32.
    fp32_model = transformers.Gemma2ForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        ref = fp32_model(torch.tensor(case.tokens, dtype=torch.long)).logits.numpy()
    cfg, params = model.load_hf(tmp_path, dtype=jnp.float32)
    np.testing.assert_allclose(logits_of(cfg, params, case.tokens), ref, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def broken(hf_cases, tmp_path):
    """A writable copy of a good single-file checkpoint and its tensors."""
    folder = tmp_path / "broken"
    shutil.copytree(hf_cases["window"].path, folder)
    return folder, load_file(folder / "model.safetensors")


def test_folder_without_config_json(broken):
    folder, _ = broken
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="No config.json in model folder"):
        model.load_hf(folder)


def test_missing_folder_and_missing_weights(broken, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.load_hf(tmp_path / "nowhere")
    folder, _ = broken
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="No model.safetensors or"):
        model.load_hf(folder)


def test_missing_tensor_is_named(broken):
    folder, tensors = broken
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"
    ):
        model.load_hf(folder)


def test_misshaped_tensor_is_named_with_both_shapes(broken):
    folder, tensors = broken
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    save_file(tensors, folder / "model.safetensors")
    name = r"model\.layers\.0\.self_attn\.k_proj\.weight"
    with pytest.raises(ValueError, match=name + r" has shape \[8, 32\], expected \[16, 32\]"):
        model.load_hf(folder)


def test_unexpected_tensor_is_named(broken):
    folder, tensors = broken
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.zeros((8,), np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"unexpected tensors: model\.layers\.0\.self_attn\.q_norm"
    ):
        model.load_hf(folder)


def test_a_tied_lm_head_tensor_is_tolerated(broken, hf_cases):
    folder, tensors = broken
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    save_file(tensors, folder / "model.safetensors")
    cfg, params = model.load_hf(folder)
    np.testing.assert_array_equal(np.asarray(params["embed"]), tensors["model.embed_tokens.weight"])


def test_config_with_too_few_layers_reports_unexpected_tensors(broken):
    folder, _ = broken
    hf = json.loads((folder / "config.json").read_text())
    hf["num_hidden_layers"], hf["layer_types"] = 1, hf["layer_types"][:1]
    (folder / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=r"unexpected tensors: model\.layers\.1\."):
        model.load_hf(folder)


def test_index_naming_a_missing_shard(hf_cases, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(hf_cases["window"].sharded_path, folder)
    next(folder.glob("model-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="Checkpoint shard .* is missing"):
        model.load_hf(folder)


# ---------------------------------------------------------------------------- tokenizer, config


def _save_tokenizer(folder):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "to": 3, "be": 4, "or": 5, "not": 6}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    tok.save_pretrained(folder)


def test_load_tokenizer_and_load_from_config(hf_cases, tmp_path):
    ml_collections = pytest.importorskip("ml_collections")
    folder = tmp_path / "with_tokenizer"
    shutil.copytree(hf_cases["window"].path, folder)
    _save_tokenizer(folder)
    tok = model.load_tokenizer(folder)
    assert tok("to be or not to be")["input_ids"][-6:] == [3, 4, 5, 6, 3, 4]
    model_cfg = ml_collections.ConfigDict({"path": str(folder), "dtype": "bfloat16"})
    cfg, params, tok2 = model.load_from_config(model_cfg)
    assert cfg.num_hidden_layers == 2 and params["embed"].dtype == jnp.bfloat16
    assert tok2.pad_token_id == 0
    with pytest.raises(ValueError, match="model.dtype 'float16' is not supported"):
        model.load_from_config({"path": str(folder), "dtype": "float16"})
    with pytest.raises(FileNotFoundError, match="No tokenizer in"):
        model.load_tokenizer(hf_cases["window"].path)


def test_embedded_model_loads_like_transformers():
    """The shipped tiny model (another package builds it) gives transformers' logits."""
    from gemmascope import assets

    if not (assets.TINY_MODEL_DIR / "config.json").is_file():
        pytest.skip("the embedded tiny model is not built yet")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, params, tok = model.load_from_config({"path": "embedded", "dtype": "float32"})
    tokens = np.asarray([tok("To be, or not to be")["input_ids"]], np.int32)
    assert tokens[0, 0] == cfg.bos_token_id
    ref_model = transformers.Gemma2ForCausalLM.from_pretrained(
        assets.TINY_MODEL_DIR, attn_implementation="eager", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        ref = ref_model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(logits_of(cfg, params, tokens), ref, atol=TOL, rtol=0)


def test_non_float_dtype_is_refused(hf_cases):
    with pytest.raises(ValueError, match="dtype must be a float dtype"):
        model.load_hf(hf_cases["window"].path, dtype=jnp.int32)


@pytest.mark.parametrize("keep_bytes", [None, 40, 0])
def test_damaged_or_truncated_safetensors_names_the_file(broken, keep_bytes):
    folder, _ = broken
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    cut = len(data) - 100 if keep_bytes is None else keep_bytes  # data cut, header cut, empty
    weights.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"model\.safetensors' is damaged or truncated"):
        model.load_hf(folder)


def test_damaged_shard_of_a_sharded_checkpoint_is_named(hf_cases, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(hf_cases["window"].sharded_path, folder)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(ValueError, match=f"{shard.name}' is damaged or truncated"):
        model.load_hf(folder)


def test_a_tokenizer_larger_than_the_embedding_is_refused(hf_cases, tmp_path):
    folder = tmp_path / "small_vocab"
    shutil.copytree(hf_cases["window"].path, folder)
    _save_tokenizer(folder)  # 7 tokens
    hf = json.loads((folder / "config.json").read_text())
    hf["vocab_size"] = 5
    (folder / "config.json").write_text(json.dumps(hf))
    tensors = load_file(hf_cases["window"].path / "model.safetensors")
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:5]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match="has 7 tokens but the model's embedding table has only 5"):
        model.load_from_config({"path": str(folder)})
    # More rows than tokens is fine (Gemma 3's multimodal checkpoints: 262,208 for 262,144).
    cfg = model.read_config(hf_cases["window"].path)
    model.check_tokenizer(cfg, model.load_tokenizer(folder))


def test_unsupported_model_type_lists_the_supported_ones(broken):
    folder, _ = broken
    hf = json.loads((folder / "config.json").read_text())
    hf["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=r"model_type='llama'; supported model types: \['gemma2'"):
        model.load_hf(folder)
