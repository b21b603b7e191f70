"""One device resolver for training, sampling and the generation actors; a GPU actor that cannot use CUDA stops
the run at start, with one line, before anything is written (a real Ray head declaring GPUs on this CPU
machine, where torch sees no CUDA)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthgen.generate.device import cuda_unusable_reason, gpu_holder_problem, resolve_device

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens where torch sees no CUDA")


def test_names_resolve_to_torch_devices_and_nonsense_is_refused():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cpu" if cuda_unusable_reason() else "cuda")
    for name in ("tpu", "gpu", "cuda:x", ""):
        with pytest.raises(ValueError, match=r"must be auto, cpu, cuda or cuda:N, got"):
            resolve_device(name)


@NO_CUDA
def test_without_cuda_an_explicit_cuda_says_why_and_auto_is_cpu():
    reason = cuda_unusable_reason()
    assert reason and "\n" not in reason
    with pytest.raises(ValueError, match=r"^cuda:0 was asked for but torch cannot use CUDA here: .*\(torch "):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu")
    message = gpu_holder_problem("gpu-7 (10.0.0.7)", [3])
    assert message.startswith("the actor on node gpu-7 (10.0.0.7) holds GPU(s) [3] but torch cannot use CUDA: ")
    assert f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}, NVIDIA driver " in message
    assert message.endswith("install a CUDA build of torch that matches the node's NVIDIA driver, or run with "
                            "--gpus 0 for CPU actors") and "\n" not in message


def test_training_and_sampling_name_the_flag(tmp_path, breast_npz):
    from typer.testing import CliRunner

    from synthgen.cli import app

    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--data", breast_npz, "--out", str(tmp_path / "m"), "--device", "tpu"])
    sampled = runner.invoke(app, ["sample", "--out", str(tmp_path / "grid.png"), "--device", "tpu"])
    for result in (trained, sampled):
        assert result.exit_code == 1
        assert result.output.strip().splitlines()[-1] == ("error: --device must be auto, cpu, cuda or cuda:N, "
                                                          "got 'tpu'")
    assert not (tmp_path / "m").exists() and not (tmp_path / "grid.png").exists()


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synthgen", *args], capture_output=True, text=True,
                          timeout=timeout)


@NO_CUDA
@pytest.mark.slow
@pytest.mark.parametrize("gpus", [["--gpus", "1"], ["--gpus", "2"], []])  # [] = every GPU the cluster has
def test_a_gpu_run_where_torch_sees_no_cuda_fails_at_start_and_writes_nothing(gpus, tmp_path, tiny_checkpoint,
                                                                             ray_head):
    out = tmp_path / "never"
    refused = cli("run", "--count", "300", "--shard-size", "100", "--model", tiny_checkpoint, "--out", str(out),
                  "--address", ray_head, "--no-progress", *gpus)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stdout == "" and refused.stderr.count("\n") == 1, refused.stderr  # one line, no traceback
    line = refused.stderr
    prefix = "" if gpus == ["--gpus", "1"] else r"2 of 2 GPU actors cannot use CUDA; "
    assert re.match(rf"error: {prefix}the actor on node \S+ \(\S+\) holds GPU\(s\) \[[01]\] but torch "
                    r"cannot use CUDA: .+ \(torch .+, built for CUDA .+, NVIDIA driver .+\); install a CUDA build "
                    r"of torch .+, or run with --gpus 0 for CPU actors\n$", line), line
    assert not out.exists()  # no shard, no manifest: the cluster refused the job before any write
    assert not list(Path(tmp_path).rglob("*.parquet"))
