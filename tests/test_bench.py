"""``bench gpu`` and ``bench input`` run end to end at tiny sizes on the CPU: their JSON has the documented
structure and every ratio and time is finite and positive (behaviour, not speed: no number is compared to a
bound)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from kdbench.bench import main
from kdbench.bench.gpu import FULL, SMOKE, Sizes, numbers
from kdbench.bench.inputs import SAMPLE_PHOTOS, bench_input, sample_image_folder

LOOP_KEYS = {"model", "img_size", "batch", "steps", "epochs", "method", "amp_bf16", "channels_last",
             "images_per_epoch", "harness_epoch_s", "bare_epoch_s", "harness_img_s", "bare_img_s",
             "harness_vs_bare", "peak_memory_mb", "torch_compile"}
COMPILE_KEYS = {"backend", "first_epoch_s", "compile_s", "compiled_epoch_s", "compiled_img_s", "eager_img_s",
                "compiled_vs_eager", "peak_memory_mb"}
HEAD_KEYS = {"rows", "tokens", "step_ms", "step_gflop", "head_tflops", "matmul_tflops", "head_vs_matmul",
             "peak_memory_mb", "width", "depth", "batch", "mul"}


def test_smoke_measures_what_the_full_run_measures_at_smaller_sizes() -> None:
    """Same models, sampler settings and sections; only sizes (and the compile backend) differ."""
    assert [w.model for w in SMOKE.workloads] == [w.model for w in FULL.workloads] == ["resnet18", "resnet8x4_cifar"]
    assert [(w.img_size, w.batch) for w in FULL.workloads] == [(224, 256), (32, 64)]
    assert FULL.sampler_steps == (64, 100) and FULL.sampler_batches == (1, 256)
    assert FULL.compile_backend == "inductor"
    for name in ("student", "teacher", "samples", "cfg"):
        assert getattr(SMOKE, name) == getattr(FULL, name), name
    assert (FULL.samples, FULL.cfg) == (5, 2.0)
    assert {f.name for f in dataclasses.fields(Sizes)} >= {"workloads", "sampler_steps", "head_width"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    path = tmp_path_factory.mktemp("bench") / "gpu.json"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["gpu", "--smoke", "--json", str(path)]) == 0
    return json.loads(path.read_text()), out.getvalue()


def test_gpu_smoke_json_structure(smoke: tuple[dict, str]) -> None:
    result, _ = smoke
    assert result["schema"] == "kdbench.bench.gpu/1" and result["mode"] == "smoke"
    env = result["environment"]
    for key in ("torch", "cuda", "device_name", "git_commit", "git_dirty"):
        assert key in env, key
    assert env["torch"] == torch.__version__
    assert result["sizes"]["compile_backend"] == "aot_eager"
    assert [loop["model"] for loop in result["loops"]] == ["resnet18", "resnet8x4_cifar"]
    for loop in result["loops"]:
        assert set(loop) >= LOOP_KEYS, LOOP_KEYS - set(loop)
        assert set(loop["torch_compile"]) >= COMPILE_KEYS
        assert loop["amp_bf16"] is True and loop["channels_last"] is True
        assert loop["images_per_epoch"] == loop["steps"] * loop["batch"]
    assert set(result["gendd_head"]) >= HEAD_KEYS
    sampler = result["gendd_sampler"]
    assert [run["steps"] for run in sampler["runs"]] == [2, 3]
    for run in sampler["runs"]:
        assert run["samples"] == 5 and run["cfg"] == 2.0
        for b in (1, 4):
            for key in ("predict_ms_per_img", "student_ms_per_img", "predict_vs_student"):
                assert f"{key}_b{b}" in run


def test_gpu_smoke_every_number_is_finite_and_positive(smoke: tuple[dict, str]) -> None:
    result, _ = smoke
    values = numbers({k: v for k, v in result.items() if k != "environment"})
    assert len(values) > 60
    bad = [(path, v) for path, v in values if not (math.isfinite(v) and v > 0)]
    assert not bad


def test_gpu_smoke_prints_a_table_and_the_json(smoke: tuple[dict, str]) -> None:
    _, printed = smoke
    assert "harness / bare loop, resnet18 32px b4" in printed
    assert "compiled / eager bare, resnet8x4_cifar" in printed
    assert "GenDD head step / matmul" in printed and "GenDD predict / student, K=3" in printed
    assert '"schema": "kdbench.bench.gpu/1"' in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="the full sizes run on a GPU")
def test_gpu_full_sizes_refuse_to_run_on_a_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpu"]) == 2
    assert "--smoke" in capsys.readouterr().out


def test_sample_image_folder_writes_imagenet_sized_jpegs(tmp_path: Path) -> None:
    from PIL import Image

    sample_image_folder(tmp_path, 6, classes=3)
    files = sorted(tmp_path.rglob("*.jpg"))
    assert len(files) == 6 and sorted(p.name for p in tmp_path.iterdir()) == ["c0", "c1", "c2"]
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and 333 <= min(image.size) <= 500


def test_input_bench_structure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "input.json"
    bench_input(None, images=8, limit=8, size=64, batch=4, workers=[0], repeats=2, consume=1e9, pillow_simd=None,
                json_path=str(path))
    result = json.loads(path.read_text())
    printed = capsys.readouterr().out
    assert result["source"] == SAMPLE_PHOTOS and SAMPLE_PHOTOS in printed
    assert result["images"] == 8 and result["cores"] >= 1
    assert [r["decoder"] for r in result["results"]] == ["pil", "torchvision"]
    for row in result["results"]:
        assert len(row["img_s"]) == len(row["startup_s"]) == 2
        for value in (*row["img_s"], *row["startup_s"], row["vs_pil"], row["vs_pil_paired"]):
            assert math.isfinite(value) and value > 0
        assert row["keeps_up"] is False and row["workers_needed"] >= 1  # nothing decodes 1e9 img/s
    assert set(result["not_measured"]) == ({"pillow-simd", "dali"} if not torch.cuda.is_available()
                                           else {"pillow-simd"})


def test_input_bench_reads_a_users_image_folder(tmp_path: Path) -> None:
    sample_image_folder(tmp_path / "data" / "train", 8, classes=2)
    result = bench_input(str(tmp_path / "data"), images=0, limit=6, size=32, batch=3, workers=[0], repeats=1,
                         consume=None, pillow_simd=None, json_path=None)
    assert result["images"] == 6 and "keeps_up" not in result["results"][0]
