"""nbclip-world's training terms: the distillation that lets a relation phase keep what the shipped
model knew, and the mirror pairs and paraphrases that teach left from right."""

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nbeval.scorers.clip_train import _MIRROR, distillation_loss, mirror_pairs, paraphrase, paraphrase_loss, relation_of
from nbeval.world import COLOURS, render
from nbeval.world.claims import RELATIONS, random_claim, scene_for


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


def _centre(image: np.ndarray, colour: str) -> np.ndarray:
    """(x, y) centroid of the pixels painted exactly in a world colour."""
    ys, xs = np.nonzero((image == np.array(COLOURS[colour], dtype=np.uint8)).all(-1))
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("relation", RELATIONS)
def test_a_mirror_pair_shows_what_its_mirrored_caption_says(relation):
    """The mirrored image and caption must agree with each other on real renders, or the pairs would
    teach the towers the wrong way round."""
    rng = random.Random(f"mirror:{relation}")
    claim = next(c for c in iter(lambda: random_claim(rng, relation=True), None) if c.relation == relation and c.groups[0].colour != c.groups[1].colour)
    image = torch.from_numpy(np.asarray(render(scene_for(claim, rng), 128)).copy())
    swapped = replace(claim, groups=claim.groups[::-1])
    images, captions, negatives = mirror_pairs(image[None], [claim.caption()], [[swapped.caption()]])
    assert images.shape[0] == 2 and captions[0] == claim.caption()
    (a, b), mirrored = claim.groups, captions[1]
    assert relation_of(mirrored) == _MIRROR[relation] and mirrored.replace(_MIRROR[relation], relation) == claim.caption()
    assert negatives[1] == [replace(swapped, relation=_MIRROR[relation]).caption()]
    dx, dy = _centre(images[1].numpy(), a.colour) - _centre(images[1].numpy(), b.colour)
    truth = {"to the left of": dx < 0, "to the right of": dx > 0, "above": dy < 0, "below": dy > 0}
    assert truth[relation_of(mirrored)], (mirrored, dx, dy)
    assert mirror_pairs(image[None], ["two red circles"], [["three red circles"]])[0].shape[0] == 1  # no relation: no pair


def test_paraphrase_tells_the_same_relation_from_the_other_object():
    assert paraphrase("a red circle to the left of a blue square") == "a blue square to the right of a red circle"
    assert paraphrase("an orange star below a green triangle") == "a green triangle above an orange star"
    assert paraphrase("two red circles and one blue square") is None


def test_paraphrase_loss_ranks_the_paraphrase_against_the_swapped_caption():
    """A text tower that gives each caption's paraphrase the caption's own embedding scores a low loss;
    one blind to word order (the paraphrase as close as the swap) cannot go below log(2)."""
    caption, swapped = "a red circle to the left of a blue square", "a blue square to the left of a red circle"
    table = {caption: [1.0, 0.0], paraphrase(caption): [1.0, 0.0], swapped: [0.0, 1.0]}

    class Lookup(torch.nn.Module):
        def encode_text(self, texts, normalize=True):
            return F.normalize(torch.tensor([table[t] for t in texts]), dim=-1)

    sees_order = paraphrase_loss(Lookup(), lambda t: t, [caption], [[swapped]], torch.tensor(50.0))
    table[paraphrase(caption)] = table[swapped] = [0.7, 0.7]
    blind = paraphrase_loss(Lookup(), lambda t: t, [caption], [[swapped]], torch.tensor(50.0))
    assert sees_order < 1e-6 and blind == pytest.approx(np.log(2), abs=1e-6)
