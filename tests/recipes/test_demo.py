"""The demo recipe: its step budget is calibrated in the precision that will train; the tour runs."""

from __future__ import annotations

from lmforge.models import build_model, get_preset
from lmforge.train import precision

TINY = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 128, "max_seq_len": 128}


def test_demo_calibrates_in_the_precision_that_will_train(monkeypatch):
    from lmforge.recipes.demo import calibrate_steps

    seen = []
    real = precision.autocast
    monkeypatch.setattr(precision, "autocast", lambda p, device: seen.append(p) or real("fp32", device))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    model = build_model(get_preset("llama-tiny", vocab_size=64, **TINY))
    assert calibrate_steps(model, 2, 8, minutes=0.01) >= 20
    assert seen and set(seen) == {"bf16"}
    seen.clear()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    calibrate_steps(model, 2, 8, minutes=0.01)
    assert set(seen) == {"fp32"}



def test_the_tour_builds_every_preset_and_embeds_with_minilm(minilm_dir, capsys):
    from lmforge.models import PRESETS
    from lmforge.recipes.demo import show_models

    show_models()
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert "6,738,415,616" in out  # llama-7b, counted on the meta device
    sims = [float(line.split()[0]) for line in out.splitlines() if "~" in line]
    assert sims[0] > 0.7 and abs(sims[1]) < 0.1  # "eating food" ~ "eating bread", not ~ "stock market"
