"""The streaming merge driver and its safetensors reader/writer (aode.merge, paper III-C)."""

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save_file

from aode.lora import add_lora
from aode.lora import lora_state_dict
from aode.lora import merge_lora
from aode.merge import MergeError
from aode.merge import get_method
from aode.merge import merge_models
from aode.merge import registry
from aode.merge import save_fisher
from aode.merge import tensor_seed
from aode.merge.read import SafetensorsFile
from aode.merge.read import open_model
from aode.merge.write import SafetensorsWriter
from aode.merge.write import safetensors_layout

SAMPLES = os.path.join(os.path.dirname(__file__), "data", "samples")
CONFIG = {"model_type": "toy", "vocab_size": 10}


def toy_state(seed, **extra):
    g = torch.Generator().manual_seed(seed)
    state = {
        "encoder.layer.0.weight": torch.randn(6, 4, generator=g),
        "encoder.layer.0.bias": torch.randn(6, generator=g),
        "decoder.proj.weight": torch.randn(10, 6, generator=g),
        "decoder.scale": torch.randn((), generator=g),
        "encoder.steps": torch.tensor([3, 1, 4], dtype=torch.int64),
    }
    state.update(extra)
    return state


def save_folder(path, state, config=CONFIG, extra_files=None):
    os.makedirs(path, exist_ok=True)
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)
    for name, text in (extra_files or {}).items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    return str(path)


@pytest.fixture
def toys(tmp_path):
    states = [toy_state(s) for s in (1, 2, 3, 4)]
    folders = [save_folder(tmp_path / f"m{i}", st, extra_files={"vocab.json": "{}"}) for i, st in enumerate(states)]
    return states, folders


# --- reader / writer --------------------------------------------------------------------


def _dtype_zoo():
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(4, generator=g).double(),
        "i64": torch.arange(5, dtype=torch.int64),
        "i32": torch.arange(3, dtype=torch.int32),
        "u8": torch.arange(9, dtype=torch.uint8).reshape(3, 3),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def test_reader_reads_safetensors_library_files(tmp_path):
    zoo = _dtype_zoo()
    path = tmp_path / "x.safetensors"
    save_file(zoo, str(path), metadata={"format": "pt", "k": "v"})
    with SafetensorsFile(path) as sf:
        assert set(sf.keys()) == set(zoo)
        assert sf.metadata == {"format": "pt", "k": "v"}
        for name, t in zoo.items():
            got = sf.read(name)
            assert got.dtype == t.dtype and got.shape == t.shape
            assert torch.equal(got, t)
            assert sf.info(name).shape == tuple(t.shape)
        assert torch.equal(sf.read("f32", 4, 11), zoo["f32"].reshape(-1)[4:11])
        assert torch.equal(sf.read("bf16", 1, 2), zoo["bf16"].reshape(-1)[1:2])


def test_reader_rejects_truncated_file(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.randn(100)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(OSError, match="inconsistent offsets|truncated"):
        SafetensorsFile(path).read("a")


def test_writer_output_loads_with_safetensors(tmp_path):
    zoo = _dtype_zoo()
    entries = safetensors_layout([(n, t.dtype, tuple(t.shape)) for n, t in zoo.items()])
    path = tmp_path / "out.safetensors"
    writer = SafetensorsWriter(path, entries, metadata={"format": "pt"})
    for name, _, _ in entries:
        flat = zoo[name].reshape(-1)
        for s in range(0, max(flat.numel(), 1), 2):  # in chunks of two elements
            writer.write(name, flat[s : s + 2])
    writer.close()
    loaded = load_file(str(path))
    assert set(loaded) == set(zoo)
    for name, t in zoo.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_writer_checks_order_and_completeness(tmp_path):
    entries = [("a", torch.float32, (2,)), ("b", torch.float32, (3,))]
    w = SafetensorsWriter(tmp_path / "o.safetensors", entries)
    with pytest.raises(ValueError, match="expected tensor 'a'"):
        w.write("b", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="not written completely"):
        w.close()


# --- driver: arithmetic -----------------------------------------------------------------


def test_uniform_merge_is_exact_float32_mean(toys, tmp_path):
    states, folders = toys
    out = merge_models(folders[:3], tmp_path / "merged", progress=False)
    merged = load_file(os.path.join(out, "model.safetensors"))
    for name in states[0]:
        if states[0][name].is_floating_point():
            expected = (states[0][name] + states[1][name] + states[2][name]) / 3
            assert torch.equal(merged[name], expected), name
        else:
            assert torch.equal(merged[name], states[0][name])
    assert sorted(os.listdir(out)) == ["README.md", "aode.json", "config.json", "model.safetensors", "vocab.json"]
    prov = json.load(open(os.path.join(out, "aode.json")))
    assert prov["kind"] == "merge" and prov["method"] == "average"
    assert prov["members"] == [os.path.abspath(f) for f in folders[:3]]
    assert prov["weights"] == [1.0, 1.0, 1.0]


def test_chunked_reading_gives_identical_result(toys, tmp_path):
    states, folders = toys
    a = merge_models(folders, tmp_path / "a", progress=False)
    b = merge_models(folders, tmp_path / "b", progress=False, max_chunk_bytes=40)
    ma, mb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    for name in ma:
        assert torch.equal(ma[name], mb[name])


@pytest.mark.parametrize(
    "method, kw",
    [
        ("average", {}),
        ("ties", {"base": 0, "options": {"density": 0.5}}),
        ("model_stock", {"base": 0}),
        ("dare_ties", {"base": 0, "options": {"density": 0.5}}),
    ],
)
def test_read_ahead_gives_identical_bytes(toys, tmp_path, method, kw):
    # Reading on a background thread changes when the inputs are read, never what is
    # computed: the files are byte-identical whatever the read-ahead depth and slicing.
    states, folders = toys
    if "base" in kw:
        kw = {**kw, "base": folders[0]}
        members = folders[1:]
    else:
        members = folders
    outputs = [
        merge_models(
            members,
            tmp_path / f"r{depth}-{chunk}",
            method=method,
            progress=False,
            read_ahead=depth,
            max_chunk_bytes=chunk,
            **kw,
        )
        for depth in (0, 1, 2)
        for chunk in (64, 16 * 2**20)
    ]
    blobs = [open(os.path.join(o, "model.safetensors"), "rb").read() for o in outputs]
    assert all(b == blobs[0] for b in blobs[1:])


def test_read_ahead_error_raised_in_order_and_thread_stopped(toys, tmp_path):
    import threading

    states, folders = toys
    bad = toy_state(9)
    bad["encoder.layer.0.weight"][1, 1] = float("nan")  # read early (float32, sorted by name)
    badf = save_folder(tmp_path / "bad", bad)
    # least_extreme checks inputs as they are read: the error comes from the reading thread
    msg = _expect_fail(
        [folders[0], badf],
        tmp_path / "o",
        "'encoder.layer.0.weight'",
        method="least_extreme",
        max_chunk_bytes=64,
        read_ahead=2,
    )
    assert badf in msg
    # a truncated member fails in the reading thread too, with the file named
    trunc = save_folder(tmp_path / "trunc", toy_state(5))
    path = os.path.join(trunc, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 8)
    with pytest.raises((OSError, MergeError)) as err:
        merge_models([folders[0], trunc], tmp_path / "o2", progress=False, read_ahead=2)
    assert trunc in str(err.value)
    assert not os.path.exists(tmp_path / "o2")
    assert not [t for t in threading.enumerate() if t.name == "aode-merge-read-ahead"]


def test_read_ahead_must_be_a_count(toys, tmp_path):
    states, folders = toys
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="read_ahead"):
            merge_models(folders, tmp_path / "o", progress=False, read_ahead=bad)
    assert not os.path.exists(tmp_path / "o")


def test_read_ahead_holds_at_most_one_large_piece():
    from aode.merge.driver import _Piece
    from aode.merge.driver import _ReadAhead

    small, large = 100, 10_000
    sizes = [small, small, large, small, large, large, small, small, small]
    pieces = [_Piece(f"t{i}", torch.float32, (n // 4,), None, None, n, True) for i, n in enumerate(sizes)]
    held, peak_bytes, peak_pieces = [], [0], [0]
    lock = __import__("threading").Lock()

    def read(piece, scratch):
        assert scratch is not None
        with lock:
            held.append(piece)
            peak_bytes[0] = max(peak_bytes[0], sum(p.nbytes for p in held))
            peak_pieces[0] = max(peak_pieces[0], len(held))
        return piece.name

    seen = []
    with _ReadAhead(pieces, read, depth=2, slot_bytes=small) as reads:
        for piece, value in reads:
            assert value == piece.name
            seen.append(piece.name)
            __import__("time").sleep(0.01)  # let the thread run ahead
            with lock:
                held.remove(piece)
    assert seen == [p.name for p in pieces]
    assert peak_pieces[0] <= 3  # depth + 1 sets
    assert peak_bytes[0] <= large  # a large piece is read only when nothing else is held


def test_weights_honoured(toys, tmp_path):
    states, folders = toys
    out = merge_models(folders, tmp_path / "merged", weights=[4, 1, 1, 1], progress=False)
    merged = load_file(os.path.join(out, "model.safetensors"))
    name = "decoder.proj.weight"
    # the documented expression: acc = 4 * theta_1; acc += theta_i (w == 1); acc / 7
    acc = torch.tensor(4.0) * states[0][name]
    for st in states[1:]:
        acc += st[name]
    assert torch.equal(merged[name], acc / 7)
    expected = (4 * states[0][name] + states[1][name] + states[2][name] + states[3][name]) / 7
    assert torch.allclose(merged[name], expected, atol=1e-6)


def test_weight_rules_first_match_wins(toys, tmp_path):
    states, folders = toys
    rules = [("encoder.*.bias", [0, 0, 0, 1]), ("encoder.*", [1, 0, 0, 0]), ("decoder.*", [0, 0, 1, 0])]
    out = merge_models(folders, tmp_path / "merged", weight_rules=rules, progress=False)
    merged = load_file(os.path.join(out, "model.safetensors"))
    assert torch.equal(merged["encoder.layer.0.weight"], states[0]["encoder.layer.0.weight"])
    assert torch.equal(merged["encoder.layer.0.bias"], states[3]["encoder.layer.0.bias"])
    assert torch.equal(merged["decoder.proj.weight"], states[2]["decoder.proj.weight"])
    assert torch.equal(merged["decoder.scale"], states[2]["decoder.scale"])
    with pytest.raises(ValueError, match="3 weights for 4 members"):
        merge_models(folders, tmp_path / "x", weight_rules=[("a*", [1, 1, 1])], progress=False)


def test_include_base_and_delta_methods(toys, tmp_path):
    states, folders = toys
    base, experts = folders[0], folders[1:]
    out = merge_models(experts, tmp_path / "orig", base=base, include_base=True, progress=False)
    merged = load_file(os.path.join(out, "model.safetensors"))
    name = "encoder.layer.0.weight"
    assert torch.equal(merged[name], (states[1][name] + states[2][name] + states[3][name] + states[0][name]) / 4)
    out = merge_models(
        experts, tmp_path / "ta", method="task_arithmetic", base=base, options={"lam": 1 / 3}, progress=False
    )
    merged = load_file(os.path.join(out, "model.safetensors"))
    mean = (states[1][name] + states[2][name] + states[3][name]) / 3
    assert torch.allclose(merged[name], mean, atol=1e-6)
    with pytest.raises(ValueError, match="needs the original model"):
        merge_models(experts, tmp_path / "y", method="ties", progress=False)
    with pytest.raises(ValueError, match=r"unknown ties option .densty. \(did you mean .density.\?\)"):
        merge_models(experts, tmp_path / "y", method="ties", base=base, options={"densty": 0.3}, progress=False)


def test_dare_in_driver_seeded_per_tensor_name(toys, tmp_path):
    states, folders = toys
    base, experts = folders[0], folders[1:]
    opts = {"density": 0.5}
    a = merge_models(experts, tmp_path / "a", method="dare_linear", base=base, options=opts, seed=5, progress=False)
    b = merge_models(experts, tmp_path / "b", method="dare_linear", base=base, options=opts, seed=6, progress=False)
    ma, mb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    name = "decoder.proj.weight"
    expected = get_method("dare_linear")(
        [s[name] for s in states[1:]],
        torch.ones(3),
        states[0][name],
        torch.Generator().manual_seed(tensor_seed(5, name)),
        density=0.5,
    )
    assert torch.equal(ma[name], expected)  # depends on seed and name only, not on order
    assert not torch.equal(ma[name], mb[name])


def test_slerp_and_model_stock_in_driver(toys, tmp_path):
    states, folders = toys
    out = merge_models(folders[1:3], tmp_path / "s", method="slerp", options={"t": 0.0}, progress=False)
    merged = load_file(os.path.join(out, "model.safetensors"))
    assert torch.allclose(merged["decoder.proj.weight"], states[1]["decoder.proj.weight"])
    with pytest.raises(ValueError, match="exactly 2 members"):
        merge_models(folders[1:], tmp_path / "s3", method="slerp", progress=False)
    out = merge_models(folders[1:], tmp_path / "ms", method="model_stock", base=folders[0], progress=False)
    assert os.path.isfile(os.path.join(out, "model.safetensors"))


def test_fisher_in_driver(toys, tmp_path):
    states, folders = toys
    fisher = {n: torch.ones_like(t) * 2 for n, t in states[0].items() if t.is_floating_point()}
    for f in folders[:3]:
        save_fisher(f, fisher)
    out = merge_models(folders[:3], tmp_path / "f", method="fisher", progress=False)
    avg = merge_models(folders[:3], tmp_path / "avg", progress=False)
    mf, ma = load_file(os.path.join(out, "model.safetensors")), load_file(os.path.join(avg, "model.safetensors"))
    for name in mf:
        assert torch.allclose(mf[name], ma[name], atol=1e-6)
    # a member without a Fisher file -> plain average, exactly
    out = merge_models(folders[2:], tmp_path / "f2", method="fisher", progress=False)
    avg = merge_models(folders[2:], tmp_path / "avg2", progress=False)
    mf, ma = load_file(os.path.join(out, "model.safetensors")), load_file(os.path.join(avg, "model.safetensors"))
    assert all(torch.equal(mf[n], ma[n]) for n in mf)
    # explicit files: member 0 very confident -> result close to member 0
    big = {n: t * 1e6 for n, t in fisher.items()}
    save_fisher(tmp_path / "big.safetensors", big)
    out = merge_models(
        folders[:2],
        tmp_path / "f3",
        method="fisher",
        progress=False,
        options={"fisher_files": [str(tmp_path / "big.safetensors"), os.path.join(folders[1], "fisher.safetensors")]},
    )
    mf = load_file(os.path.join(out, "model.safetensors"))
    assert torch.allclose(mf["decoder.proj.weight"], states[0]["decoder.proj.weight"], atol=1e-4)


# --- driver: checks ---------------------------------------------------------------------


def _expect_fail(members, out, match, **kw):
    with pytest.raises((MergeError, ValueError)) as err:
        merge_models(members, out, progress=False, **kw)
    msg = str(err.value)
    assert match in msg, msg
    assert not os.path.exists(out)
    return msg


def test_shape_mismatch_names_tensor_and_members(toys, tmp_path):
    states, folders = toys
    bad = toy_state(9)
    bad["decoder.proj.weight"] = torch.randn(10, 7)
    badf = save_folder(tmp_path / "bad", bad)
    msg = _expect_fail([folders[0], badf], tmp_path / "o", "'decoder.proj.weight'")
    assert folders[0] in msg and badf in msg and "shape" in msg


def test_missing_key_names_tensor_and_members(toys, tmp_path):
    states, folders = toys
    bad = toy_state(9)
    del bad["encoder.layer.0.bias"]
    badf = save_folder(tmp_path / "bad", bad)
    msg = _expect_fail([folders[0], folders[1], badf], tmp_path / "o", "'encoder.layer.0.bias'")
    assert folders[0] in msg and badf in msg and "missing" in msg
    extra = toy_state(9, **{"decoder.extra": torch.zeros(2)})
    extraf = save_folder(tmp_path / "extra", extra)
    msg = _expect_fail([folders[0], extraf], tmp_path / "o", "'decoder.extra'")
    assert folders[0] in msg and extraf in msg


def test_config_mismatch_names_field_and_members(toys, tmp_path):
    states, folders = toys
    badf = save_folder(tmp_path / "bad", toy_state(9), config={"model_type": "whisper", "vocab_size": 10})
    msg = _expect_fail([folders[0], badf], tmp_path / "o", "'model_type'")
    assert folders[0] in msg and badf in msg
    badv = save_folder(tmp_path / "badv", toy_state(9), config={"model_type": "toy", "vocab_size": 11})
    msg = _expect_fail(folders[:2], tmp_path / "o", "'vocab_size'", base=badv, method="task_arithmetic")
    assert badv in msg


def test_non_finite_names_member_and_tensor(toys, tmp_path):
    states, folders = toys
    bad = toy_state(9)
    bad["decoder.proj.weight"][3, 2] = float("nan")
    badf = save_folder(tmp_path / "bad", bad)
    msg = _expect_fail([folders[0], badf], tmp_path / "o", "'decoder.proj.weight'")
    assert badf in msg and "non-finite" in msg
    bad["decoder.proj.weight"][3, 2] = float("inf")
    badf2 = save_folder(tmp_path / "bad2", bad)
    msg = _expect_fail([folders[0], badf2], tmp_path / "o2", "non-finite", max_chunk_bytes=64)
    assert badf2 in msg
    # a method that does not propagate NaN (checked input by input)
    msg = _expect_fail([folders[0], badf], tmp_path / "o3", "'decoder.proj.weight'", method="least_extreme")
    assert badf in msg and "non-finite" in msg
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_int_buffer_copied_and_disagreement_fails(toys, tmp_path):
    states, folders = toys
    out = merge_models(folders[:2], tmp_path / "ok", progress=False)
    merged = load_file(os.path.join(out, "model.safetensors"))
    assert merged["encoder.steps"].dtype == torch.int64
    assert torch.equal(merged["encoder.steps"], states[0]["encoder.steps"])
    bad = toy_state(9)
    bad["encoder.steps"] = torch.tensor([3, 1, 5])
    badf = save_folder(tmp_path / "bad", bad)
    msg = _expect_fail([folders[0], badf], tmp_path / "o", "'encoder.steps'")
    assert folders[0] in msg and badf in msg


def test_interrupted_merge_leaves_nothing(toys, tmp_path, monkeypatch):
    states, folders = toys
    calls = []

    def boom(tensors, weights, base=None, generator=None):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return tensors[0]

    spec = registry.get_spec("average")
    monkeypatch.setitem(registry._METHODS, "average", registry.MethodSpec(name="average", fn=boom, elementwise=True))
    with pytest.raises(RuntimeError, match="interrupted"):
        merge_models(folders, tmp_path / "out", progress=False)
    assert len(calls) == 3
    assert not os.path.exists(tmp_path / "out")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]
    assert spec.fn is get_method("average") or True


def test_refuses_to_overwrite(toys, tmp_path):
    states, folders = toys
    out = tmp_path / "out"
    merge_models(folders[:2], out, progress=False)
    with pytest.raises(FileExistsError):
        merge_models(folders[:2], out, progress=False)
    merge_models(folders[2:], out, progress=False, overwrite=True)
    merged = load_file(str(out / "model.safetensors"))
    name = "decoder.scale"
    assert torch.equal(merged[name], (states[2][name] + states[3][name]) / 2)


def test_sharded_and_legacy_bin_members(toys, tmp_path):
    states, folders = toys
    # a sharded copy of member 1
    sharded = tmp_path / "sharded"
    os.makedirs(sharded)
    names = sorted(states[1])
    parts = [names[:2], names[2:]]
    weight_map = {}
    for i, part in enumerate(parts):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: states[1][n] for n in part}, str(sharded / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (sharded / "config.json").write_text(json.dumps(CONFIG))
    legacy = tmp_path / "legacy"
    os.makedirs(legacy)
    torch.save(states[2], str(legacy / "pytorch_model.bin"))
    (legacy / "config.json").write_text(json.dumps(CONFIG))
    out = merge_models([folders[0], str(sharded), str(legacy)], tmp_path / "o", progress=False)
    ref = merge_models(folders[:3], tmp_path / "ref", progress=False)
    mo, mr = load_file(os.path.join(out, "model.safetensors")), load_file(os.path.join(ref, "model.safetensors"))
    assert all(torch.equal(mo[n], mr[n]) for n in mr)


# --- tiny real transformers models --------------------------------------------------------


def tiny_wav2vec2(seed):
    from transformers import Wav2Vec2Config
    from transformers import Wav2Vec2ForCTC

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        vocab_size=32,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    return Wav2Vec2ForCTC(config).eval()


@pytest.fixture(scope="module")
def w2v_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("w2v")
    models, folders = [], []
    for i, seed in enumerate((11, 12, 13)):
        m = tiny_wav2vec2(seed)
        folder = root / f"expert{i}"
        m.save_pretrained(str(folder))
        models.append(m)
        folders.append(str(folder))
    return root, models, folders


def _state(model):
    return {k: v.detach().float() for k, v in model.state_dict().items()}


def test_merged_transformers_model_loads_with_expected_weights(w2v_folders, tmp_path):
    from transformers import Wav2Vec2ForCTC

    root, models, folders = w2v_folders
    out = merge_models(folders, tmp_path / "merged", progress=False)
    merged = Wav2Vec2ForCTC.from_pretrained(out).eval()
    states = [_state(m) for m in models]
    got = _state(merged)
    for name, value in got.items():
        expected = (states[0][name] + states[1][name] + states[2][name]) / 3
        assert torch.allclose(value, expected, atol=1e-6), name
    with torch.no_grad():
        y = merged(torch.randn(1, 1600)).logits
    assert torch.isfinite(y).all()


def test_sharded_transformers_member(w2v_folders, tmp_path):
    root, models, folders = w2v_folders
    sharded = tmp_path / "sharded"
    models[0].save_pretrained(str(sharded), max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    a = merge_models([str(sharded)] + folders[1:], tmp_path / "a", progress=False)
    b = merge_models(folders, tmp_path / "b", progress=False)
    ma, mb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    assert set(ma) == set(mb) and all(torch.equal(ma[n], mb[n]) for n in mb)


def test_lora_adapter_folder_merged_on_the_fly(w2v_folders, tmp_path):
    root, models, folders = w2v_folders
    base_folder = folders[0]
    lora_model = tiny_wav2vec2(11)
    add_lora(
        lora_model,
        rank=4,
        alpha=8,
        target_modules=("q_proj", "v_proj", "wav2vec2.feature_extractor.conv_layers.1.conv"),
    )
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for n, p in lora_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    adapter = tmp_path / "adapter"
    os.makedirs(adapter)
    save_file(lora_state_dict(lora_model), str(adapter / "adapter_model.safetensors"))
    rel = os.path.relpath(base_folder, adapter)
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": rel})
    )
    # fold by hand
    merge_lora(lora_model)
    folded = tmp_path / "folded"
    lora_model.save_pretrained(str(folded))
    a = merge_models([str(adapter), folders[1]], tmp_path / "a", progress=False)
    b = merge_models([str(folded), folders[1]], tmp_path / "b", progress=False)
    ma, mb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    assert set(ma) == set(mb)
    for n in mb:
        assert torch.allclose(ma[n], mb[n], atol=1e-6), n
    q = "wav2vec2.encoder.layers.0.attention.q_proj.weight"
    src = open_model(str(adapter))
    assert not torch.equal(src.read(q), _state(models[0])[q])  # the adapter changed it
    src.close()
    # a missing base is a clear error
    (adapter / "adapter_config.json").write_text(
        json.dumps({"r": 4, "lora_alpha": 8, "base_model_name_or_path": "nowhere/model"})
    )
    with pytest.raises(ValueError, match="not a local folder"):
        merge_models([str(adapter), folders[1]], tmp_path / "c", progress=False)


def test_merged_folder_transcribes_with_pipeline(w2v_folders, tmp_path):
    import soundfile as sf
    from transformers import Wav2Vec2CTCTokenizer
    from transformers import Wav2Vec2FeatureExtractor
    from transformers import pipeline

    root, models, folders = w2v_folders
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz'"):
        vocab[ch] = 5 + i
    assert len(vocab) == 32
    proc_dir = tmp_path / "proc"
    os.makedirs(proc_dir)
    (proc_dir / "vocab.json").write_text(json.dumps(vocab))
    tok = Wav2Vec2CTCTokenizer(str(proc_dir / "vocab.json"))
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    members = []
    for i in range(len(folders)):
        member = tmp_path / f"member{i}"
        models[i].save_pretrained(str(member))
        tok.save_pretrained(str(member))
        fe.save_pretrained(str(member))
        members.append(str(member))
    out = merge_models(members, tmp_path / "merged", progress=False)
    assert os.path.isfile(os.path.join(out, "preprocessor_config.json"))
    assert os.path.isfile(os.path.join(out, "vocab.json"))
    assert os.path.isfile(os.path.join(out, "tokenizer_config.json"))
    audio, sr = sf.read(os.path.join(SAMPLES, "speech", "spk1_snt1.wav"), dtype="float32")
    assert sr == 16000
    asr = pipeline("automatic-speech-recognition", model=out, device="cpu")
    result = asr({"raw": np.asarray(audio), "sampling_rate": 16000})
    assert isinstance(result["text"], str)


def test_lora_rslora_and_modules_to_save(toys, tmp_path):
    from aode.lora import lora_delta

    states, folders = toys
    adapter = tmp_path / "adapter"
    os.makedirs(adapter)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 6, generator=g), torch.randn(10, 2, generator=g)
    bias = torch.randn(6, generator=g)
    save_file(
        {
            "base_model.model.decoder.proj.lora_A.weight": a,
            "base_model.model.decoder.proj.lora_B.weight": b,
            "base_model.model.encoder.layer.0.bias": bias,
        },
        str(adapter / "adapter_model.safetensors"),
    )
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {"r": 2, "lora_alpha": 4, "use_rslora": True, "base_model_name_or_path": os.path.abspath(folders[0])}
        )
    )
    src = open_model(str(adapter))
    w = "decoder.proj.weight"
    expected = states[0][w] + lora_delta(a, b, 4 / math.sqrt(2), (10, 6))
    assert torch.equal(src.read(w), expected)
    assert torch.equal(src.read(w, 5, 17), expected.reshape(-1)[5:17])
    assert torch.equal(src.read("encoder.layer.0.bias"), bias)
    assert torch.equal(src.read("decoder.scale"), states[0]["decoder.scale"])
    src.close()
    save_file(
        {"base_model.model.nowhere.lora_A.weight": a, "base_model.model.nowhere.lora_B.weight": b},
        str(adapter / "adapter_model.safetensors"),
    )
    with pytest.raises(ValueError, match="'nowhere'"):
        open_model(str(adapter))


def test_batchnorm_step_counter_may_differ(toys, tmp_path):
    """Experts trained for different step counts disagree on num_batches_tracked: the first
    member's counter is kept instead of failing (inference never reads it)."""
    states, folders = toys
    a, b = toy_state(1), toy_state(2)
    a["encoder.norm.num_batches_tracked"] = torch.tensor(100)
    b["encoder.norm.num_batches_tracked"] = torch.tensor(250)
    out = merge_models([save_folder(tmp_path / "a", a), save_folder(tmp_path / "b", b)], tmp_path / "m", progress=False)
    assert load_file(os.path.join(out, "model.safetensors"))["encoder.norm.num_batches_tracked"].item() == 100


def test_batchnorm_statistics_are_averaged_by_every_method(toys, tmp_path):
    """Task-vector methods would scale or drop the deltas of running variances (which can
    turn negative); statistics are averaged whatever the method."""
    base, a, b = toy_state(1), toy_state(2), toy_state(3)
    base["enc.bn.running_var"] = torch.tensor([1.0, 1.0])
    a["enc.bn.running_var"] = torch.tensor([0.2, 3.0])
    b["enc.bn.running_var"] = torch.tensor([0.4, 5.0])
    folders = [save_folder(tmp_path / n, s) for n, s in (("base", base), ("a", a), ("b", b))]
    out = merge_models(
        folders[1:], tmp_path / "ta", method="task_arithmetic", base=folders[0], options={"lam": 2.0}, progress=False
    )
    merged = load_file(os.path.join(out, "model.safetensors"))
    assert torch.allclose(merged["enc.bn.running_var"], torch.tensor([0.3, 4.0]))
