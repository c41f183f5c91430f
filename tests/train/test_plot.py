"""The validation curve, its crossing of a baseline, and the PNG."""

from __future__ import annotations

import json

from lmforge.train.plot import first_crossing, plot_validation_curve, validation_curve


def test_curve_crossing_and_png(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "time": 0.0, "loss": 9.0}, {"step": 10, "time": 60.0, "val_ppl": 300.0},
            {"step": 20, "time": 120.0, "val_ppl": 120.0}, {"step": 30, "time": 180.0, "val_ppl": 80.0}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    curve = validation_curve(path)
    assert [p["minutes"] for p in curve] == [1.0, 2.0, 3.0]
    assert first_crossing(curve, 100.0)["step"] == 30
    assert first_crossing(curve, 50.0) is None
    png = plot_validation_curve(path, 100.0, "KN 5-gram", tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
