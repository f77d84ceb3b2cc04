"""DCAMA teacher: dense cross-attention, K-shot concatenation, voting, N-way merge, absent classes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsdistill.config import ModelCfg
from fsdistill.models.build import build_teacher
from fsdistill.models.decoder import ABSENT_LOGIT, merge_classes
from fsdistill.models.teacher import ATTENTION_LEVELS, DenseCrossAttention, one_hot_masks, sinusoidal_pe
from fsdistill.train.losses import focal_loss

SIZE = 64


@pytest.fixture(scope="module")
def teacher():
    """A 3-class test-resnet teacher at 64 px, eval mode, with a non-trivial (random) decoder head."""
    torch.manual_seed(0)
    t = build_teacher(ModelCfg(backbone="test-resnet", size=SIZE), num_classes=3, pretrained=False).eval()
    with torch.no_grad():
        for p in t.decoder.mixer3.parameters():  # zero-initialised last conv: make the decoder matter
            p.normal_(0, 0.1)
    return t


def _features(teacher, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return teacher.backbone(torch.randn(n, 3, SIZE, SIZE, generator=g))


def _support(teacher, masks: torch.Tensor, seed: int = 1):
    return teacher.prepare_support(_features(teacher, masks.shape[0], seed), masks)


def _masks(*class_sets: tuple[int, ...]) -> torch.Tensor:
    """One S×64×64 mask per entry: class c as a horizontal band ``c`` (rows 16c..16c+15); 0 elsewhere."""
    masks = torch.zeros(len(class_sets), SIZE, SIZE, dtype=torch.long)
    for s, classes in enumerate(class_sets):
        for c in classes:
            masks[s, 16 * (c - 1) + 4 * s : 16 * c + 4 * s, 8 * s :] = c
    return masks


# --- DenseCrossAttention ---------------------------------------------------------------------------------------


def _random_block(channels=16, heads=4, qk_norm=10.0, seed=0):
    torch.manual_seed(seed)
    block = DenseCrossAttention(channels, heads=heads, dropout=0.5, qk_norm=qk_norm).eval()
    with torch.no_grad():  # move away from the identity so the projections matter
        for lin in block.linears:
            lin.weight.add_(0.3 * torch.randn_like(lin.weight))
            lin.bias.normal_(0, 0.1)
    return block


def _hand_tokens(x: torch.Tensor, lin: torch.nn.Linear, heads: int, normalise: bool) -> torch.Tensor:
    """B×C×h×w → B×heads×(h·w)×d, written out independently of DenseCrossAttention._tokens."""
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2) + sinusoidal_pe(h * w, c, x.device, x.dtype)
    tokens = tokens @ lin.weight.T + lin.bias
    tokens = tokens.view(b, h * w, heads, c // heads).transpose(1, 2)
    return F.normalize(tokens, dim=-1) if normalise else tokens


def test_identity_init_of_projections() -> None:
    block = DenseCrossAttention(32, heads=8)
    assert len(block.linears) == 2  # query and key only: the value is the support mask
    for lin in block.linears:
        assert torch.equal(lin.weight, torch.eye(32))
        assert torch.equal(lin.bias, torch.zeros(32))


def test_teacher_projections_start_as_identity(teacher) -> None:
    fresh = build_teacher(ModelCfg(backbone="test-resnet", size=SIZE), num_classes=2, pretrained=False)
    assert len(fresh.blocks) == len(ATTENTION_LEVELS)
    for block, lvl in zip(fresh.blocks, ATTENTION_LEVELS):
        c = fresh.backbone.spec.channels[lvl]
        for lin in block.linears:
            assert torch.equal(lin.weight, torch.eye(c)) and not lin.bias.any()


def test_attention_output_shapes() -> None:
    block = _random_block(channels=16, heads=4)
    query = torch.randn(1, 16, 5, 7)
    support = torch.randn(3, 16, 4, 6)  # S = 3 shots
    keys = block.keys(support)
    assert keys.shape == (3, 4, 24, 4)  # S×heads×hw×d
    keys = keys.transpose(0, 1).reshape(4, 3 * 24, 4)
    groups = 2
    values = torch.rand(3 * 24, 2 * groups)
    values[:, groups:] = 1.0
    out = block(query, keys, values)
    assert out.shape == (groups, 5, 7)
    assert torch.isfinite(out).all()
    assert (out >= 0).all() and (out <= 1 + 1e-6).all()  # a convex combination of mask values in [0, 1]


@pytest.mark.parametrize("qk_norm", [10.0, None])
def test_k_shot_keys_concatenated_give_one_softmax(qk_norm) -> None:
    """Keys of K supports on one axis: one softmax over all K·h'·w' positions, values = masks, per-class flags."""
    heads, c = 4, 16
    block = _random_block(channels=c, heads=heads, qk_norm=qk_norm, seed=1)
    torch.manual_seed(2)
    query = torch.randn(1, c, 4, 5)
    shots = torch.randn(3, c, 3, 4)  # K = 3 supports
    masks = (torch.rand(3, 2, 3, 4) > 0.5).float()  # K×G×h'×w'
    flags = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # class 1 is not shown by support 1
    k, g, h, w = masks.shape

    keys = block.keys(shots).transpose(0, 1).reshape(heads, k * h * w, -1)
    mask_tokens = (masks * flags[:, :, None, None]).permute(0, 2, 3, 1).reshape(k * h * w, g)
    flag_tokens = flags[:, None, :].expand(k, h * w, g).reshape(k * h * w, g)
    out = block(query, keys, torch.cat([mask_tokens, flag_tokens], dim=1))

    # By hand: scores of every query pixel against the concatenated keys of all shots, softmax per class over
    # only the keys of the supports flagged for it, weighted sum of the mask values, mean over heads.
    normalise = qk_norm is not None
    q = _hand_tokens(query, block.linears[0], heads, normalise)[0]  # heads×Q×d
    kk = torch.cat([_hand_tokens(shots[i : i + 1], block.linears[1], heads, normalise)[0] for i in range(k)], dim=1)
    scale = qk_norm if qk_norm else 1.0 / math.sqrt(c // heads)
    scores = q @ kk.transpose(1, 2) * scale  # heads×Q×(K·h'·w')
    expected = []
    for cls in range(g):
        key_flag = flags[:, cls].repeat_interleave(h * w).bool()  # K·h'·w'
        attn = torch.softmax(scores[:, :, key_flag], dim=-1)
        vals = masks[:, cls].reshape(-1)[key_flag]
        expected.append((attn @ vals).mean(0).view(4, 5))
    expected = torch.stack(expected)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)

    # The test can tell one softmax from K separate ones averaged (the wrong K-shot rule).
    per_shot = []
    for i in range(k):
        sc = scores[:, :, i * h * w : (i + 1) * h * w]
        per_shot.append((torch.softmax(sc, -1) @ masks[i, 0].reshape(-1)).mean(0))
    assert not torch.allclose(expected[0], torch.stack(per_shot).mean(0).view(4, 5), atol=1e-4)


def test_coarse_maps_concatenate_shots_on_the_key_axis(teacher) -> None:
    """teacher.coarse_maps with K supports = the hand softmax over the concatenated keys (level 1, every block)."""
    masks = _masks((1, 2), (2,), (1, 3))
    support = _support(teacher, masks)
    query = _features(teacher, 1, seed=7)
    coarse = teacher.coarse_maps(query, support)
    lvl = ATTENTION_LEVELS[0]
    block = teacher.blocks[0]
    assert len(coarse) == 3
    for lv, cm in zip(ATTENTION_LEVELS, coarse):
        n = teacher.backbone.spec.num_blocks[lv]
        h, w = query[lv][0].shape[-2:]
        assert cm.shape == (3, n, h, w)
    heads = block.heads
    for j, (q_map, s_map) in enumerate(zip(query[lvl], support.feats[lvl])):
        q = block._tokens(q_map, block.linears[0], noise=False)[0]
        keys = block.keys(s_map)  # S×heads×hw×d
        s, _, hw, d = keys.shape
        kk = keys.transpose(0, 1).reshape(heads, s * hw, d)
        scores = q @ kk.transpose(1, 2) * block.qk_norm
        for cls in range(3):
            flag = support.present[:, cls].repeat_interleave(hw)
            attn = torch.softmax(scores[:, :, flag], dim=-1)
            vals = support.masks[lvl][:, cls].reshape(-1)[flag]
            expected = (attn @ vals).mean(0).view(q_map.shape[-2:])
            torch.testing.assert_close(coarse[0][cls, j], expected, rtol=1e-4, atol=1e-5)


def test_coarse_maps_from_per_support_sums_equal_the_one_pass_attention(teacher) -> None:
    """attention_sums once per support, then coarse_from_sums for any subset = coarse_maps of that subset."""
    masks = _masks((1, 2), (2,), (1, 3), (3,))
    support = _support(teacher, masks)
    query = _features(teacher, 1, seed=7)
    sums = teacher.attention_sums(query, support)
    for lv, stage in zip(ATTENTION_LEVELS, sums):
        h, w = query[lv][0].shape[-2:]
        assert stage.shape == (4, teacher.backbone.spec.num_blocks[lv], teacher.blocks[0].heads, h * w, 4)
    for subset in ([0, 1, 2, 3], [1], [3, 0], [1, 3]):  # [1] and [1, 3] lack class 1: its maps stay 0
        part = support.select(subset)
        expected = teacher.coarse_maps(query, part)
        got = teacher.coarse_from_sums([s[subset] for s in sums], part.present, query)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert float(got[0][0].abs().max()) == 0.0


def test_partial_sums_recover_the_unnormalised_softmax_mass() -> None:
    """Column N = Σ exp(score), columns < N = Σ exp(score)·mask: checked against explicit scores."""
    block = _random_block(channels=16, heads=4, qk_norm=3.0)
    g = torch.Generator().manual_seed(3)
    query, support = torch.randn(1, 16, 3, 4, generator=g), torch.randn(2, 16, 2, 5, generator=g)
    masks = torch.rand(2, 10, 2, generator=g)
    keys = block.keys(support, noise=False)
    sums = block.partial_sums(query, keys, masks)
    q = block._tokens(query, block.linears[0], noise=False)  # 1×heads×Q×d
    weights = torch.exp(q @ keys.transpose(-1, -2) * 3.0)  # S×heads×Q×K
    torch.testing.assert_close(sums[..., -1], weights.sum(-1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sums[..., :2], weights @ masks[:, None], rtol=1e-4, atol=1e-4)


# --- voting ----------------------------------------------------------------------------------------------------


def test_voting_at_least_k_equals_no_voting(teacher) -> None:
    masks = _masks((1, 2), (2, 3), (1,), (3,))  # K = 4
    support = _support(teacher, masks)
    query = _features(teacher, 1, seed=11)
    whole = teacher.predict_features(query, support, voting=None)  # teacher.voting = 10 ≥ K
    assert teacher.voting >= 4
    for v in (4, 5, 100):
        torch.testing.assert_close(teacher.predict_features(query, support, voting=v), whole, rtol=0, atol=1e-5)
    assert whole.shape == (1, 4, SIZE // teacher.decoder.output_stride, SIZE // teacher.decoder.output_stride)


def test_chunked_voting_takes_the_best_chunk_per_class(teacher) -> None:
    masks = _masks((1, 2), (2, 3), (1, 3), (1, 2, 3))  # every class in both chunks of V = 2
    support = _support(teacher, masks)
    query = _features(teacher, 1, seed=12)
    voted = teacher.predict_features(query, support, voting=2)
    assert voted.shape == (1, 4, SIZE // teacher.decoder.output_stride, SIZE // teacher.decoder.output_stride)
    assert torch.isfinite(voted).all()
    # Per class the foreground logit is the larger of the two chunks' (reference.md §1.4).
    chunk_fg = []
    for part in ([0, 1], [2, 3]):
        chunk = support.select(part)
        present = chunk.present.any(dim=0)
        logits = teacher.class_logits(query, chunk, teacher.coarse_maps(query, chunk), present)
        assert present.all()
        chunk_fg.append(logits[0, :, 1])
    torch.testing.assert_close(voted[0, 1:], torch.maximum(*chunk_fg), rtol=0, atol=1e-5)
    # Not simply the whole-set result: voting changes the answer.
    assert not torch.allclose(voted, teacher.predict_features(query, support, voting=4), atol=1e-4)


def test_chunked_voting_with_a_class_only_in_a_later_chunk(teacher) -> None:
    masks = _masks((1,), (1,), (1, 2), (2,))  # class 3 nowhere, class 2 only in chunk 2
    support = _support(teacher, masks)
    voted = teacher.predict_features(_features(teacher, 1, seed=13), support, voting=2)
    assert torch.isfinite(voted).all()
    assert (voted[0, 3] == ABSENT_LOGIT).all()  # a class no support shows is never predicted
    assert (voted.argmax(1) != 3).all()
    assert (voted[0, 2] > ABSENT_LOGIT).all()  # the later chunk's class is kept


def test_predict_batches_queries(teacher) -> None:
    support = _support(teacher, _masks((1,), (2, 3)))
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    out = teacher.predict(images, support)
    assert out.shape == (2, 4, SIZE // teacher.decoder.output_stride, SIZE // teacher.decoder.output_stride)
    torch.testing.assert_close(out[1:], teacher.predict(images[1:], support), rtol=0, atol=1e-5)


# --- N-way merge -----------------------------------------------------------------------------------------------


def test_merge_classes_hand_example() -> None:
    # B=1, N=2, 1×3 pixels; logits[:, c] = (bg, fg) of class c+1.
    bg1, fg1 = [1.0, 4.0, 0.5], [3.0, 0.0, -1.0]
    bg2, fg2 = [5.0, 1.0, 7.0], [1.0, 2.0, -2.0]
    logits = torch.tensor([[[bg1, fg1], [bg2, fg2]]])[:, :, :, None, :]  # 1×2×2×1×3
    merged = merge_classes(logits)
    assert merged.shape == (1, 3, 1, 3)
    # pixel 0: class 1 has the larger fg → its bg (1.0); pixel 1: class 2 → 1.0; pixel 2: class 1 (-1 > -2) → 0.5
    torch.testing.assert_close(merged[0, 0, 0], torch.tensor([1.0, 1.0, 0.5]))
    torch.testing.assert_close(merged[0, 1, 0], torch.tensor(fg1))
    torch.testing.assert_close(merged[0, 2, 0], torch.tensor(fg2))
    assert merged.argmax(1)[0, 0].tolist() == [1, 2, 0]


def test_merge_classes_equals_the_argmax_gather_definition_including_ties() -> None:
    """The running maximum must pick the same winner as argmax (the first on ties) and pass gradients."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randint(-2, 3, (2, 4, 2, 5, 6), generator=g).float().requires_grad_()  # many fg ties
    bg, fg = logits[:, :, 0], logits[:, :, 1]
    expected = torch.cat([bg.gather(1, fg.argmax(dim=1, keepdim=True)), fg], dim=1)
    merged = merge_classes(logits)
    assert torch.equal(merged, expected)
    merged.sum().backward()
    assert logits.grad is not None and logits.grad[:, :, 0].sum() == 2 * 5 * 6  # one bg per pixel gets the gradient


def test_merge_classes_absent_class_never_wins() -> None:
    logits = torch.tensor([[[[0.0, 0.0], [1.0, -3.0]], [[0.0, 0.0], [50.0, 60.0]]]])[:, :, :, None, :]  # 1×2×2×1×2
    merged = merge_classes(logits, torch.tensor([[True, False]]))
    assert torch.isfinite(merged).all()
    assert (merged[0, 2] == ABSENT_LOGIT).all()
    torch.testing.assert_close(merged[0, 0, 0], torch.tensor([0.0, 0.0]))  # bg of class 1, not of the absent one
    assert merged.argmax(1)[0, 0].tolist() == [1, 0]
    assert (merged.argmax(1) != 2).all()


def test_merge_classes_all_absent_is_background() -> None:
    logits = torch.randn(2, 3, 2, 4, 5) * 100
    merged = merge_classes(logits, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.isfinite(merged).all()
    assert (merged.argmax(1) == 0).all()
    loss = focal_loss(merged, torch.randint(0, 4, (2, 4, 5)))
    assert torch.isfinite(loss)


# --- absent classes in training episodes -----------------------------------------------------------------------


@pytest.mark.parametrize("support_classes", [((1,), (1,)), ((), ())], ids=["class-2-3-missing", "all-missing"])
def test_no_nan_when_a_class_is_missing_from_the_supports(teacher, support_classes) -> None:
    masks = _masks(*support_classes)
    support = _support(teacher, masks)
    query = _features(teacher, 1, seed=21)
    q_mask = _masks((1, 2, 3))  # the query shows every class
    teacher.train()
    params = list(teacher.decoder.parameters()) + list(teacher.blocks.parameters())
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            coarse = teacher.coarse_maps(query, support)
            present = support.present.any(dim=0)
            logits = teacher.decode_episode(query, support, coarse, present)
            assert torch.isfinite(logits).all()
            loss = focal_loss(logits, q_mask)  # the absent classes stay in the target: the worst case
            assert torch.isfinite(loss)
            if present.any():
                loss.backward()
                grads = [p.grad for p in params if p.grad is not None]
                assert grads and all(torch.isfinite(gr).all() for gr in grads)
            else:  # nothing decoded: a constant loss (fit.py must not call backward on it)
                assert not loss.requires_grad
    finally:
        teacher.zero_grad(set_to_none=True)
        for p in params:
            p.requires_grad_(False)
        teacher.eval()
    with torch.no_grad():
        pred = teacher.predict_features(query, support)
    assert torch.isfinite(pred).all()
    assert not (pred.argmax(1) == 2).any() and not (pred.argmax(1) == 3).any()


def test_one_hot_masks_ignores_255() -> None:
    masks = torch.tensor([[[0, 1, 2, 255]]])
    onehot = one_hot_masks(masks, 2)
    assert onehot.shape == (1, 2, 1, 4)
    assert onehot[0, :, 0].tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
