"""Distillation from the ANN (--distill): the loss against its formula, the teacher found through the lineage."""

import shutil

import torch
import torch.nn.functional as F
from conftest import TINY, run_cli

from stpcli.checkpoint import load_checkpoint
from stpcli.engine.recipe import distillation_loss


def test_distillation_loss_is_the_weighted_sum_of_ce_and_tempered_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 2, 3])
    weight, tau = 0.3, 2.5
    p_teacher = torch.exp(teacher / tau) / torch.exp(teacher / tau).sum(1, keepdim=True)
    p_student = torch.exp(student / tau) / torch.exp(student / tau).sum(1, keepdim=True)
    kl = (p_teacher * (p_teacher.log() - p_student.log())).sum(1).mean()
    ce = -torch.log(torch.softmax(student, 1)[torch.arange(5), labels]).mean()
    expected = (1 - weight) * ce + weight * tau ** 2 * kl
    assert torch.allclose(distillation_loss(student, teacher, labels, weight, tau), expected)
    assert torch.allclose(distillation_loss(student, teacher, labels, 0.0, tau), F.cross_entropy(student, labels))


def test_distillation_gradient_is_tau_times_the_soft_output_difference():
    torch.manual_seed(1)
    student = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    teacher, tau = torch.randn(3, 6, dtype=torch.float64), 4.0
    distillation_loss(student, teacher, torch.zeros(3, dtype=torch.long), 1.0, tau).backward()
    expected = tau * (torch.softmax(student.detach() / tau, 1) - torch.softmax(teacher / tau, 1)) / 3
    assert torch.allclose(student.grad, expected)


def test_snn_stages_distil_from_the_ann_they_were_converted_from(pipeline, tmp_path):
    out = tmp_path / "s_t1.safetensors"
    run_cli(["temporal-prune", pipeline["sb_t2"], "--schedule", "1", "--epochs-per-stage", "1", "--distill", "0.5",
             "--batch-size", "16", "--device", "cpu", "--out", out])
    entry = load_checkpoint(out).history[-1]
    nb = load_checkpoint(pipeline["nb"])
    assert entry["options"]["teacher"] == {"path": str(pipeline["nb"].resolve()), "sha256": nb.sha256}
    assert entry["options"]["distill"] == 0.5


def test_distillation_refuses_a_missing_or_mismatched_teacher(pipeline, dataset_dir, tmp_path):
    na = tmp_path / "na.safetensors"
    shutil.copy(pipeline["na"], na)
    s3 = tmp_path / "s_t3.safetensors"
    run_cli(["convert", na, "--timesteps", "3", "--epochs", "0", "--calibration-images", "16", "--device", "cpu",
             "--out", s3])
    na.unlink()
    out = tmp_path / "s_t1.safetensors"
    common = ["--schedule", "1", "--epochs-per-stage", "1", "--distill", "0.5", "--device", "cpu", "--out", out]
    gone = run_cli(["temporal-prune", s3, *common], expect=2)
    assert "is gone; pass --teacher" in gone.output and not out.exists()
    other = tmp_path / "other.safetensors"  # the embedded 8-class dataset: other classes
    run_cli(["train-ann", *TINY, "--epochs", "1", "--out", other])
    wrong = run_cli(["temporal-prune", s3, *common, "--teacher", other], expect=2)
    assert "other classes" in wrong.output and not out.exists()
    bad = run_cli(["temporal-prune", s3, *common[:-2], "--distill", "1.5", "--teacher", pipeline["na"], "--out", out],
                  expect=2)
    assert "--distill must lie in [0, 1]" in bad.output
    alone = run_cli(["temporal-prune", s3, "--schedule", "1", "--teacher", pipeline["na"], "--out", out], expect=2)
    assert "pass --distill W" in alone.output and not out.exists()
