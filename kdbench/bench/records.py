"""``bench report``: the time to read, aggregate and render many (FABRICATED) result records."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def bench_report(records: int = 10_000) -> None:
    """Write ``records`` fabricated result.json files, then time reading and rendering them."""
    from kdbench import store
    from kdbench.report import load_records, render

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        began = time.perf_counter()
        for i in range(records):
            method = ("vanilla", "kd", "mse", "gendd")[i % 4]
            spec = {"role": "student", "method": method, "label": method, "student": "s", "teacher": "t",
                    "teacher_id": "T", "dataset": {"name": "digits"}, "regime": {"name": f"r{i % 5}"},
                    "seed": i // 20, "epochs": 30}
            store.atomic_write_json(root / "runs" / f"{i:06d}" / "result.json", {
                "schema": store.SCHEMA, "run_id": f"{i:06d}", "state": "done", "spec": spec,
                "metrics": {"top1_last": 90 + (i % 7), "top1_best": 91 + (i % 7), "top5_last": 99.0},
                "cost": {"predict_ms_per_img_b1": 0.1, "seconds_per_epoch": 0.2}})
        written = time.perf_counter() - began
        began = time.perf_counter()
        loaded = load_records(root)
        read = time.perf_counter() - began
        began = time.perf_counter()
        render(loaded)
        rendered = time.perf_counter() - began
    print(f"{records} FABRICATED records (written in {written:.1f} s): read {read:.2f} s, "
          f"aggregated and rendered {rendered:.2f} s, total {read + rendered:.2f} s")
