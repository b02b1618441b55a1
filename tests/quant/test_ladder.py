"""The quant ladder on a tiny random model: files written, every method in the table, the fp
row exact, the caller's model untouched, and the precision ordering sane."""
from __future__ import annotations

import json

import pytest
import torch

from llmforge.model import ModelConfig, Transformer
from llmforge.quant.ladder import DEFAULT_METHODS, quant_ladder


@pytest.fixture(autouse=True)
def one_thread():
    """Matmuls this small lose more to OpenMP hand-offs than they gain on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=128, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256,
                                    max_seq_len=64))
    model.reset_parameters(std=0.06)  # peaky enough next-token distributions for KL to mean something
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, 128, (4, 48), generator=g) for _ in range(2)]
    held = [torch.randint(0, 128, (4, 48), generator=g) for _ in range(2)]
    return model.eval(), calib, held


def test_ladder_runs_every_method(tiny, tmp_path):
    model, calib, held = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = quant_ladder(model, None, calib, held, out_dir=str(tmp_path))
    # the caller's model is untouched
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == list(DEFAULT_METHODS)
    assert not [r["error"] for r in rows.values() if "error" in r]
    fp = rows["fp32"]
    assert fp["kl_per_token"] == 0 and fp["top1_agreement"] == 1.0 and fp["ppl"] == fp["ppl_fp"]
    assert fp["sqnr_min_db"] == float("inf") and fp["bits_per_weight"] == 32
    for name, r in rows.items():
        if name != "fp32":
            assert 0 < r["kl_per_token"] and 0 < r["top1_agreement"] <= 1 and r["sqnr_min_db"] < 200, name
            assert r["model_bytes"] < fp["model_bytes"], name
    kl = {k: r["kl_per_token"] for k, r in rows.items()}
    assert kl["int8"] < kl["int4_g128"] < kl["int3_g128"]
    assert kl["int4_g64"] < kl["int3_g128"] and kl["gptq4_g128"] < kl["gptq3_g128"]
    assert kl["gguf_q8_0"] < kl["gguf_q4_0"] and kl["int8"] < kl["w8a8"]
    assert rows["int8"]["sqnr_mean_db"] > rows["int4_g128"]["sqnr_mean_db"] > rows["int3_g128"]["sqnr_mean_db"]
    assert 8 < rows["int8"]["bits_per_weight"] < 9 and 4 < rows["int4_g64"]["bits_per_weight"] < 5
    assert rows["gguf_q8_0"]["bits_per_weight"] == pytest.approx(8.5)
    assert rows["gguf_q4_0"]["bits_per_weight"] == pytest.approx(4.5)
    # files: a table with every method, a PNG, and JSON that round-trips
    md = (tmp_path / "quant_ladder.md").read_text()
    for name in DEFAULT_METHODS:
        assert f"| {name} |" in md
    assert (tmp_path / "quant_ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    js = json.loads((tmp_path / "quant_ladder.json").read_text())
    assert [r["method"] for r in js["rows"]] == list(DEFAULT_METHODS)
    assert js["rows"][1]["ppl"] == pytest.approx(rows["int8"]["ppl"])


def test_ladder_bad_input(tiny, tmp_path):
    model, calib, held = tiny
    with pytest.raises(ValueError, match="unknown quantisation method"):
        quant_ladder(model, None, calib, held, methods=["fp32", "int5_magic"], out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="held-out"):
        quant_ladder(model, None, calib, [], methods=["fp32"], out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="calibration"):
        quant_ladder(model, None, [torch.full((2, 8), 500)], held, methods=["fp32"], out_dir=str(tmp_path))
    # a GGUF type the exporter does not know is reported in the row, not raised
    res = quant_ladder(model, None, calib, held, methods=["fp32", "gguf_q9_9"], out_dir=str(tmp_path))
    assert "qtype" in res["rows"][1]["error"]
    assert "gguf_q9_9 failed" in (tmp_path / "quant_ladder.md").read_text()


def test_cli_quant_ladder(tmp_path):
    """`llmforge quant-ladder` on a saved model + tokenizer, with a real GGUF round trip."""
    from llmforge.cli import main
    from llmforge.model import save_hf
    from llmforge.tokenizer import Tokenizer

    text = " ".join(f"word{i % 37} and thing{i % 11}." for i in range(600))
    tok = Tokenizer.train_from_iterator([text], vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=1, n_heads=2, ffn_dim=128,
                                    max_seq_len=32))
    save_hf(model, tmp_path / "m")
    tok.save(tmp_path / "m" / "llmforge_tokenizer.json")
    (tmp_path / "t.txt").write_text(text)
    rc = main(["quant-ladder", str(tmp_path / "m"), "--text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o"),
               "--methods", "fp32,int8,gguf_q8_0", "--seq-len", "32"])
    assert rc == 0
    js = json.loads((tmp_path / "o" / "quant_ladder.json").read_text())
    assert [r["method"] for r in js["rows"]] == ["fp32", "int8", "gguf_q8_0"]
    assert all("error" not in r for r in js["rows"]) and js["rows"][2]["kl_per_token"] > 0
