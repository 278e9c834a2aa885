"""ONNX export of the text encoder: real models, real review text, no mocks.

The shipped all-MiniLM-L6-v2 is exported once per module (~40 s on 2 cores); a tiny randomly
initialised BERT saved to a temp directory stands in for "any other local HF encoder".
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

onnxruntime = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference.data import review_sentences  # noqa: E402
from training.export import (  # noqa: E402
    THRESHOLDS, VARIANT_FILES, ExportError, default_model_dir, export_onnx, main,
)

MAX_TOKENS = 256


# ------------------------------------------------------------------------------------------
# helpers (independent of training.export's own check)
# ------------------------------------------------------------------------------------------
def _session(path: Path):
    so = onnxruntime.SessionOptions()
    so.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _onnx_embed(session, tok, texts, input_names):
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
    return session.run(["embeddings"], {k: enc[k].astype(np.int64) for k in input_names})[0]


def _torch_embed(model_dir: Path, texts, batch: int = 16) -> np.ndarray:
    """Reference: the HF model in torch (default attention), mean pooling over the attention
    mask, L2 normalisation -- written here, not imported from the code under test."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=MAX_TOKENS,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=1).numpy())
    return np.concatenate(out)


_REF_CACHE: dict[str, np.ndarray] = {}


def _torch_embed_one(text: str) -> np.ndarray:
    if text not in _REF_CACHE:
        _REF_CACHE[text] = _torch_embed(default_model_dir(), [text])
    return _REF_CACHE[text]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _texts(n: int, offset: int = 3) -> list[str]:
    """Real review texts, a different slice from the export's own check sample."""
    pool = review_sentences(limit=4000)
    return pool[offset::max(1, len(pool) // n)][:n]


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "minilm"
    manifest = export_onnx(None, out, max_tokens=MAX_TOKENS, n_check=64, progress=False)
    return out, manifest


@pytest.fixture(scope="module")
def reference(minilm):
    texts = _texts(32)
    return texts, _torch_embed(default_model_dir(), texts)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A second, different local HF encoder: a tiny random BERT + the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(default_model_dir()), local_files_only=True)
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=37, vocab_size=len(tok)))
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


# ------------------------------------------------------------------------------------------
# the MiniLM export
# ------------------------------------------------------------------------------------------
def test_manifest(minilm):
    out, manifest = minilm
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["format"] == 1
    assert manifest["model_name"] == "all-MiniLM-L6-v2"
    assert Path(manifest["source_dir"]) == default_model_dir().resolve()
    assert manifest["dim"] == 384
    assert manifest["max_tokens"] == MAX_TOKENS
    assert manifest["pooling"] == "mean" and manifest["normalized"] is True
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["output"] == "embeddings"
    assert manifest["export_time"].endswith("+00:00")
    assert manifest["torch_version"] == torch.__version__
    assert manifest["onnxruntime_version"] == onnxruntime.__version__
    assert manifest["check_sentences"] == 64
    assert set(manifest["variants"]) == {"fp32", "int8", "fp16"}
    targets = {v: r["target"] for v, r in manifest["variants"].items()}
    assert targets == {"fp32": "cpu", "int8": "cpu", "fp16": "cuda"}
    for v, r in manifest["variants"].items():
        assert r["file"] == VARIANT_FILES[v]
        assert r["optimized"] is True  # BERT: the ORT optimizer ran and its output is used
        assert r["mean_cosine"] >= THRESHOLDS[v]
        assert -1.0 <= r["min_cosine"] <= r["mean_cosine"] <= 1.0 + 1e-6
    # the legacy exporter + eager attention is the path on which attention is fused
    assert manifest["optimizer"]["fused"].get("Attention") == 6
    assert (out / "config.json").is_file()
    assert not list(out.parent.glob(".minilm.*")), "temporary directories left behind"


def test_variant_files_load_with_expected_io(minilm):
    out, manifest = minilm
    for variant in ("fp32", "int8", "fp16"):
        session = _session(out / manifest["variants"][variant]["file"])
        inputs = session.get_inputs()
        assert [i.name for i in inputs] == manifest["inputs"]
        assert all(i.type == "tensor(int64)" for i in inputs)
        assert all(i.shape == ["batch", "sequence"] for i in inputs)
        (output,) = session.get_outputs()
        assert output.name == "embeddings"
        assert output.type == "tensor(float)"  # fp16 keeps float32 I/O
        assert output.shape == ["batch", 384]
    sizes = {v: (out / VARIANT_FILES[v]).stat().st_size for v in VARIANT_FILES}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]


@pytest.mark.parametrize("variant,threshold", [("fp32", 0.995), ("int8", 0.97), ("fp16", 0.995)])
def test_cosine_to_torch_on_review_text(minilm, reference, variant, threshold):
    out, manifest = minilm
    texts, ref = reference
    session = _session(out / VARIANT_FILES[variant])
    tok = _tokenizer(out)
    emb = np.concatenate([_onnx_embed(session, tok, texts[i:i + 16], manifest["inputs"])
                          for i in range(0, len(texts), 16)])
    cos = _cos(emb, ref)
    assert cos.mean() >= threshold, f"{variant}: mean cosine {cos.mean():.4f}"
    if variant == "fp32":
        assert cos.min() >= 0.999


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_dynamic_batch_and_sequence(minilm, reference, variant):
    out, manifest = minilm
    texts, ref = reference
    session = _session(out / VARIANT_FILES[variant])
    tok = _tokenizer(out)
    min_cos = 0.999 if variant == "fp32" else 0.9
    # batch 1 at several lengths (including a truncated one), then a batch of 5 mixed lengths
    lengths = {}
    for i in range(4):
        enc = tok(texts[i:i + 1], truncation=True, max_length=MAX_TOKENS)
        lengths[i] = len(enc["input_ids"][0])
        emb = _onnx_embed(session, tok, texts[i:i + 1], manifest["inputs"])
        assert emb.shape == (1, 384)
        assert _cos(emb, ref[i:i + 1])[0] >= min_cos
    assert len(set(lengths.values())) > 1, "want different sequence lengths"
    five = [texts[0], "great strings", texts[5], "ok", texts[7]]
    emb5 = _onnx_embed(session, tok, five, manifest["inputs"])
    assert emb5.shape == (5, 384)
    # padding must not change a row: each row equals its batch-1 encoding. int8 only roughly:
    # dynamic quantization picks one activation scale per tensor, i.e. per batch, and very short
    # texts ("ok": 3 tokens) are its worst case (~0.96 to torch) -- per row >= 0.94, mean >= 0.97
    alone = np.concatenate([_onnx_embed(session, tok, [t], manifest["inputs"]) for t in five])
    torch_rows = np.concatenate([_torch_embed_one(t) for t in five])
    for got in (_cos(emb5, alone), _cos(emb5, torch_rows)):
        if variant == "fp32":
            assert got.min() >= 0.999
        else:
            assert got.min() >= 0.94 and got.mean() >= THRESHOLDS["int8"], got


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_rows_are_unit_norm(minilm, reference, variant):
    out, manifest = minilm
    texts, _ = reference
    session = _session(out / VARIANT_FILES[variant])
    emb = _onnx_embed(session, _tokenizer(out), texts[:12], manifest["inputs"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_saved_tokenizer_pads_to_longest(minilm):
    out, _ = minilm
    raw = json.loads((out / "tokenizer.json").read_text())
    assert raw["padding"] is None  # the shipped one pads everything to 128
    assert raw["truncation"] is None
    tok = _tokenizer(out)
    enc = tok(["ok", "this guitar strap is fine"], padding=True, return_tensors="np")
    assert enc["input_ids"].shape[1] == len(tok("this guitar strap is fine")["input_ids"]) < 128
    assert enc["attention_mask"][0].sum() == 3  # [CLS] ok [SEP]
    # the tokenizers library reading the file directly does not pad either
    from tokenizers import Tokenizer

    assert len(Tokenizer.from_file(str(out / "tokenizer.json")).encode("ok").ids) == 3
    assert tok.model_max_length == MAX_TOKENS
    assert "max_length" not in json.loads((out / "tokenizer_config.json").read_text())


# ------------------------------------------------------------------------------------------
# refusal, atomicity, other models, CLI
# ------------------------------------------------------------------------------------------
def test_too_strict_threshold_refuses_and_leaves_nothing(tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(ExportError) as info:
        export_onnx(None, out, variants=("int8",), n_check=16, progress=False,
                    thresholds={"int8": 0.9999})
    message = str(info.value)
    assert "int8" in message and "0.9999" in message and "threshold" in message
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp directory left beside it either


def test_refusal_keeps_an_existing_out_dir(tmp_path, tiny_model_dir):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")
    with pytest.raises(ExportError, match="fp32"):
        export_onnx(tiny_model_dir, out, variants=("fp32",), n_check=8, progress=False,
                    thresholds={"fp32": 1.5})
    assert (out / "keep.txt").read_text() == "previous export"
    # a successful export replaces it
    export_onnx(tiny_model_dir, out, variants=("fp32",), n_check=8, progress=False)
    assert not (out / "keep.txt").exists()
    assert (out / "model.fp32.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_other_local_hf_encoder(tmp_path, tiny_model_dir):
    out = tmp_path / "tiny-onnx"
    manifest = export_onnx(tiny_model_dir, out, n_check=32, progress=False)
    assert manifest["dim"] == 32
    assert manifest["source_dir"] == str(Path(tiny_model_dir).resolve())
    assert manifest["model_name"] == Path(tiny_model_dir).name
    assert set(manifest["variants"]) == {"fp32", "int8", "fp16"}
    texts = _texts(10)
    ref = _torch_embed(tiny_model_dir, texts)
    for variant in ("fp32", "int8", "fp16"):
        session = _session(out / VARIANT_FILES[variant])
        emb = _onnx_embed(session, _tokenizer(out), texts, manifest["inputs"])
        assert emb.shape == (10, 32)
        assert _cos(emb, ref).mean() >= THRESHOLDS[variant]


def test_cli(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "cli"
    assert main(["--model", str(tiny_model_dir), "--out", str(out), "--variants", "fp32",
                 "--max-tokens", "64", "--n-check", "8", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["max_tokens"] == 64 and list(manifest["variants"]) == ["fp32"]
    # ExportError -> exit code 2 with the message
    assert main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "bad"),
                 "--max-tokens", "100000", "--no-progress"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bad"),
                 "--no-progress"]) == 2
    assert not (tmp_path / "bad").exists()
