"""Identity consistency: characters in the world, the suite's samples, the verification AUC, and
validity on the oracle (clean identities verify; swapping a part lowers similarity)."""

import json
import random

import numpy as np
import pytest
from hydra.utils import instantiate
from sklearn.metrics import roc_auc_score

from nbeval.adapters import corruptions
from nbeval.adapters.oracle import OracleAdapter
from nbeval.runner import score_suite
from nbeval.stats import pair_auc, roc_auc
from nbeval.world import COLOURS, Scene, render
from nbeval.world.characters import PARTS, Character, Identity, random_identity


def test_a_character_renders_its_skin_at_its_centre_and_its_accessory_above():
    ident = Identity("square", "green", "dot", "hat", "red")
    img = np.asarray(render(Scene(characters=(Character(ident, "large", 0.5, 0.6).to_dict(),)), 200)).astype(int)
    assert np.abs(img[140, 100] - COLOURS["green"]).max() < 10  # below the eyes, inside the head
    assert np.abs(img[75, 100] - COLOURS["red"]).max() < 10  # the hat's crown
    with pytest.raises(ValueError, match="accessory must differ"):
        Identity("round", "red", "dot", "hat", "red")


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_swap_corruption_changes_exactly_severity_parts(severity):
    rng = random.Random(severity)
    for _ in range(20):
        c = Character(random_identity(rng), "medium", 0.5, 0.5)
        swapped = corruptions.SCENE_CORRUPTIONS["swap"](Scene(characters=(c.to_dict(),)), severity, rng)
        after = Character.from_dict(swapped.characters[0]).identity
        assert sum(getattr(after, p) != getattr(c.identity, p) for p in PARTS) == severity


def test_identity_samples_keep_one_identity_and_ask_for_a_change_every_turn(compose_cfg):
    suite = instantiate(compose_cfg(["suite=[identity]"]).suite.identity)
    for s in suite.samples(30, 0):
        assert len(s.truth) == suite.k and len(s.turns) == suite.k - 1
        assert all(t["identity"] == s.truth[0]["identity"] for t in s.truth)
        chars = [Character.from_dict(Scene.from_dict(t["scene"]).characters[0]) for t in s.truth]
        assert all((a.x, a.y, a.size) != (b.x, b.y, b.size) for a, b in zip(chars, chars[1:]))
        assert all(turn.startswith("The same character, now at the ") for turn in s.turns)
        assert Identity(**s.truth[0]["identity"]).describe()[2:] in s.prompt.lower()


def test_roc_auc_matches_sklearn_and_pair_auc_counts_each_pair_once():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=300), rng.random(300) < 0.3
    scores[labels] += 0.8
    scores[:20] = 0.5  # ties count half
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    emb = rng.normal(size=(12, 5))
    sim = emb @ emb.T
    group, label = np.repeat(np.arange(4), 3), np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 2, 2, 2])
    a, b = np.triu_indices(12, k=1)
    est = pair_auc(sim, group, label, n_boot=50)
    assert est.value == pytest.approx(roc_auc_score(label[a] == label[b], sim[a, b]))
    assert est.ci_low <= est.value <= est.ci_high and est.n == 4


def test_pair_auc_bootstrap_is_the_rank_auc_of_each_resamples_expanded_pairs():
    """The weighted one-pass bootstrap against its definition: concatenate the drawn groups' items
    (a group drawn twice appears twice), rank every pair but an item with itself, and take the 2.5% and
    97.5% quantiles of those AUCs: the same resamples give the same interval to the last digit (ties
    and groups drawn several times included)."""
    rng = np.random.default_rng(3)
    n_groups, k, n_boot = 9, 3, 60
    emb = rng.normal(size=(n_groups * k, 4))
    sim = np.round(emb @ emb.T, 1)  # coarse: many ties
    group = np.repeat(np.arange(n_groups), k)
    label = group % 4
    members = [np.flatnonzero(group == g) for g in range(n_groups)]

    def expanded_auc(pick: np.ndarray) -> float:
        idx = np.concatenate([members[g] for g in pick])
        a, b = (idx[t] for t in np.triu_indices(len(idx), k=1))
        keep = a != b
        return roc_auc(sim[a, b][keep], (label[a] == label[b])[keep])

    picks = np.random.default_rng(0).integers(0, n_groups, size=(n_boot, n_groups))
    boots = np.array([expanded_auc(p) for p in picks])
    est = pair_auc(sim, group, label, n_boot=n_boot, seed=0)
    assert est.value == expanded_auc(np.arange(n_groups))
    alpha = (1 - 0.95) / 2  # as pair_auc computes it: 0.025 + 2e-17
    assert (est.ci_low, est.ci_high) == tuple(np.nanquantile(boots, [alpha, 1 - alpha]))


@pytest.mark.slow
def test_oracle_identities_verify_and_a_swapped_part_lowers_similarity(compose_cfg, cache):
    """Validity (benchmarks/results/validity_identity.md has n=100 and every severity)."""
    cfg = compose_cfg(["suite=[identity]"])
    suite, scorer = instantiate(cfg.suite.identity), instantiate(cfg.scorer.identity)
    clean = score_suite(suite, OracleAdapter(), lambda role: scorer, cache, 40, 0, 16)
    assert clean.n_failed_generations == 0 and clean.n_failed_scores == 0
    assert clean.metrics["verification_auc"].value >= 0.95
    matrices = clean.scores[clean.scores["metric"] == "mean_pairwise_similarity"]
    m = np.array(json.loads(matrices["detail"].iloc[0])["matrix"])
    assert m.shape == (suite.k, suite.k) and np.allclose(np.diag(m), 1, atol=1e-3)
    swapped = score_suite(suite, OracleAdapter(corruption="swap", severity=1), lambda role: scorer, cache, 40, 0, 16)
    for metric in ("mean_pairwise_similarity", "reference_similarity"):
        assert swapped.metrics[metric].ci_high < clean.metrics[metric].ci_low, metric
