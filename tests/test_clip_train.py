"""The distillation term that lets a relation phase keep what the shipped nbclip-world knew."""

import torch

from nbeval.scorers.clip_train import distillation_loss


def test_distillation_is_zero_only_when_the_student_ranks_captions_like_the_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(6, 20) * 30
    assert distillation_loss(teacher.clone(), teacher, 5.0).abs() < 1e-5
    assert distillation_loss(teacher + 7.0, teacher, 5.0).abs() < 1e-4  # a shift per row changes no ranking
    near, far = teacher + torch.randn(6, 20), teacher[:, torch.randperm(20)]
    assert 0 < distillation_loss(near, teacher, 5.0) < distillation_loss(far, teacher, 5.0)


def test_temperature_keeps_the_margins_a_hard_label_would_drop():
    """Two students that both rank the teacher's top caption first, one with the teacher's runner-up
    second and one with it last: only a softened target tells them apart."""
    teacher = torch.tensor([[10.0, 8.0, 0.0, 0.0]]) * 10
    keeps_runner_up = torch.tensor([[10.0, 8.0, 0.0, 0.0]]) * 10
    drops_it = torch.tensor([[10.0, 0.0, 8.0, 0.0]]) * 10
    assert distillation_loss(drops_it, teacher, 1.0) < 1e-6  # at the model's own scale: as good as a hard label
    assert distillation_loss(keeps_runner_up, teacher, 5.0) < 1e-5 < 0.1 < distillation_loss(drops_it, teacher, 5.0)
