"""The prompt-tuned VPR extractor: prompt selection, prompts reaching the frozen blocks, the frozen
encoder, the orientation path of the enhancement head, and the file format."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pacegeo.backbone import VGGT, tiny
from pacegeo.errors import CheckpointError, InputError
from pacegeo.hub import backbone_fingerprint, load_backbone, save_backbone
from pacegeo.vpr import load_vpr
from pacegeo.vpr.prompt import EnhancementHead, PromptConfig, PromptExtractor, PromptPool, load_prompt, save_prompt

from helpers import load_script

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 32
CONFIG = PromptConfig(embed_dim=DIM, pool_size=3, prompt_length=2, global_dim=16, local_dim=8, kernel=3, out_dim=24)


def _backbone(seed=0) -> VGGT:
    torch.manual_seed(seed)
    return VGGT(tiny(embed_dim=DIM, depth=1, num_heads=2, dino_depth=2, with_point_head=False)).eval()


@pytest.fixture(scope="module")
def backbone():
    return _backbone()


def _extractor(backbone, config=CONFIG, seed=1) -> PromptExtractor:
    torch.manual_seed(seed)
    return PromptExtractor.from_backbone(backbone, config).eval()


def _images(n=3, h=56, w=70, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# -- prompt pool -------------------------------------------------------------------------------


def test_selection_picks_the_key_with_the_highest_cosine_similarity():
    pool = PromptPool(3, 2, 4)
    with torch.no_grad():
        # key 0 is long but points away from the query; key 1 is short and closest in angle
        pool.keys.copy_(torch.tensor([[100.0, 0, 0, 0], [0, 0.1, 0.1, 0], [0, 0, 0, 1.0]]))
    query = torch.tensor([[0.2, 1.0, 0.9, 0.0], [0.0, 0.0, 0.1, 3.0], [1.0, 0.0, 0.0, 0.5]])
    assert pool.select(query).tolist() == [1, 2, 0]  # dot products would pick [0, 2, 0]
    tokens, idx = pool(query)
    assert torch.equal(tokens, pool.prompts.detach()[[1, 2, 0]])
    assert idx.tolist() == [1, 2, 0]


def test_keys_start_at_far_apart_queries_so_every_prompt_is_used():
    pool = PromptPool(2, 1, 2)
    queries = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 2.0], [0.6, 0.8]])
    assert pool.init_keys(queries).tolist() == [0, 2]  # the query farthest in angle from the first
    assert torch.equal(pool.keys.detach(), queries[[0, 2]])
    assert pool.select(queries).tolist() == [0, 0, 1, 1]


def test_key_loss_is_one_minus_cosine_to_the_selected_key():
    pool = PromptPool(2, 1, 3)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    query = torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, 0.0]])
    idx = pool.select(query)
    assert idx.tolist() == [0, 1]
    expected = ((1 - 1.25 ** -0.5) + 0.0) / 2
    assert pool.key_loss(query, idx).item() == pytest.approx(expected, abs=1e-6)


# -- prompts in the frozen encoder -------------------------------------------------------------


def test_the_selected_prompt_changes_the_descriptor_and_the_others_do_not(backbone):
    model = _extractor(backbone)
    images = _images()
    # not a constant shift: the blocks' layer norms would remove it
    bump = torch.randn(CONFIG.prompt_length, DIM, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(images)
        chosen = model.prompts.select(model.frozen_inputs(images)[1])
        unused = sorted(set(range(CONFIG.pool_size)) - set(chosen.tolist()))
        if unused:
            model.prompts.prompts[unused[0]] += bump
            assert torch.equal(model(images), before)  # a prompt nobody selected is not seen
        model.prompts.prompts[chosen[0]] += bump
        after = model(images)
    changed = (after - before).abs().amax(dim=1) > 1e-4
    assert bool(changed[0])
    assert torch.equal(changed, (chosen == chosen[0]))  # exactly the images that use that prompt


def test_prompt_tokens_are_attended_by_the_frozen_blocks(backbone):
    # the patch features (not just the head) differ when the prompt tokens change
    model = _extractor(backbone)
    images = _images(2)
    start, query = model.frozen_inputs(images)
    with torch.no_grad():
        tokens, cls, _ = model.prompted(start, query)
        model.prompts.prompts.mul_(-3.0)
        tokens2, cls2, _ = model.prompted(start, query)
    assert tokens.shape == (2, 4 * 5, DIM)
    assert not torch.allclose(tokens, tokens2, atol=1e-4) and not torch.allclose(cls, cls2, atol=1e-4)


def test_a_training_step_moves_prompts_and_head_but_not_the_encoder(backbone):
    model = _extractor(backbone).train()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trainable_before = {k: v.clone() for k, v in model.trainable_state().items()}
    assert not any(p.requires_grad for p in model.encoder.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    start, query = model.frozen_inputs(_images(4))
    tokens, cls, idx = model.prompted(start, query)
    desc = model.head(tokens, cls, (4, 5))
    loss = -(desc[0] @ desc[1]) + model.prompts.key_loss(query, idx)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, encoder_before[k]) for k, v in model.encoder.state_dict().items())
    after = model.trainable_state()
    assert not torch.equal(after["prompts.prompts"], trainable_before["prompts.prompts"])
    assert not torch.equal(after["prompts.keys"], trainable_before["prompts.keys"])
    assert not torch.equal(after["head.out.weight"], trainable_before["head.out.weight"])


def test_token_pruning_is_refused(backbone):
    with pytest.raises(InputError, match="keep=1.0"):
        _extractor(backbone).describe(_images(1), keep=0.5)


# -- enhancement head ----------------------------------------------------------------------------


def _stripes(horizontal: bool, size=6) -> torch.Tensor:
    """``[1, size * size, DIM]`` tokens of a stripe pattern (rows constant if ``horizontal``)."""
    rows = torch.arange(size)[:, None].expand(size, size)
    pattern = (rows % 2 == 0).float() if horizontal else (rows.T % 2 == 0).float()
    feature = torch.linspace(-1.0, 2.0, DIM)
    return (pattern.flatten()[:, None] * feature + 0.1)[None]


def test_the_orientation_path_tells_horizontal_from_vertical_stripes():
    torch.manual_seed(0)
    head = EnhancementHead(CONFIG).eval()
    with torch.no_grad():  # vertical kernel = transposed horizontal kernel; symmetric diagonal kernels
        head.oriented[1] = head.oriented[0].transpose(-1, -2)
        head.oriented_bias[1] = head.oriented_bias[0]
        head.oriented[2] = head.oriented[2] + head.oriented[2].transpose(-1, -2)
        head.oriented[3] = head.oriented[3] + head.oriented[3].transpose(-1, -2)
    h_tokens, v_tokens = _stripes(True), _stripes(False)
    grid = lambda t: t.reshape(1, 6, 6, DIM).permute(0, 3, 1, 2)  # noqa: E731
    with torch.no_grad():
        rh, rv = head.orientation_responses(grid(h_tokens)), head.orientation_responses(grid(v_tokens))
        # independent reference: transposing the image swaps the horizontal and vertical responses
        torch.testing.assert_close(rh[:, 0], rv[:, 1])
        torch.testing.assert_close(rh[:, 1], rv[:, 0])
        torch.testing.assert_close(rh[:, 2:], rv[:, 2:])
        assert not torch.allclose(rh[:, 0], rv[:, 0], atol=1e-3)  # the horizontal branch itself differs
        cls = torch.zeros(1, DIM)
        # the global path cannot see the orientation; the descriptor still differs through the local path
        torch.testing.assert_close(head.global_features(grid(h_tokens), cls), head.global_features(grid(v_tokens), cls))
        dh, dv = head(h_tokens, cls, (6, 6)), head(v_tokens, cls, (6, 6))
    assert dh.shape == (1, CONFIG.out_dim)
    torch.testing.assert_close(dh.norm(dim=-1), torch.ones(1))
    assert (dh - dv).abs().max() > 1e-3


# -- files ---------------------------------------------------------------------------------------


def _save(model, path, backbone):
    return save_prompt(model, path, backbone="test-backbone", backbone_fingerprint=backbone_fingerprint(backbone))


def test_save_load_round_trip_is_bit_exact_and_stores_no_encoder(tmp_path, backbone):
    model = _extractor(backbone)
    path = _save(model, tmp_path / "p.safetensors", backbone)
    stored = load_file(str(path))
    assert set(stored) == set(model.trainable_state()) and not any(k.startswith("encoder") for k in stored)
    loaded = load_prompt(path, backbone=backbone)
    assert loaded.config == CONFIG and loaded.encoder is backbone.aggregator.patch_embed
    assert all(torch.equal(v, loaded.trainable_state()[k]) for k, v in model.trainable_state().items())
    images = _images()
    assert torch.equal(model.describe(images, batch_size=2), loaded.describe(images, batch_size=2))


def test_a_different_backbone_is_refused(tmp_path, backbone):
    path = _save(_extractor(backbone), tmp_path / "p.safetensors", backbone)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_prompt(path, backbone=_backbone(seed=5))


def test_loading_is_strict(tmp_path, backbone):
    path = _save(_extractor(backbone), tmp_path / "p.safetensors", backbone)
    state = load_file(str(path))
    from pacegeo.hub import read_metadata

    meta = read_metadata(path)
    save_file({**state, "head.extra": torch.zeros(1)}, str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_prompt(tmp_path / "extra.safetensors", backbone=backbone)
    bad = dict(state)
    bad["prompts.prompts"] = torch.zeros(CONFIG.pool_size, CONFIG.prompt_length + 1, DIM)
    save_file(bad, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="misshapen"):
        load_prompt(tmp_path / "shape.safetensors", backbone=backbone)
    with pytest.raises(CheckpointError, match="not a pacegeo prompt"):
        save_file(state, str(tmp_path / "nometa.safetensors"), metadata={"format": "other"})
        load_prompt(tmp_path / "nometa.safetensors", backbone=backbone)


# -- training script -------------------------------------------------------------------------------


def test_the_training_script_writes_both_models_loadable_on_their_backbone(tmp_path, backbone):
    pytest.importorskip("pytorch_metric_learning")
    weights = save_backbone(backbone, tmp_path / "backbone.safetensors")
    script = load_script(Path(__file__).resolve().parents[1] / "train" / "vpr_prompt.py", "pacegeo_train")
    common = ["--backbone", str(weights), "--size", "42x56", "--train-scenes", "2", "--places-per-scene", "3",
              "--views", "4", "--val-scenes", "1", "--val-queries", "4", "--places-per-batch", "3", "--steps", "2",
              "--val-every", "1", "--dim", "32", "--pool", "3"]
    assert script.main(common + ["--augment", "0.3", "--out", str(tmp_path / "p.safetensors"),
                                 "--log", str(tmp_path / "p.json")]) == 0
    assert script.main(common + ["--no-prompt", "--out", str(tmp_path / "o.safetensors"),
                                 "--log", str(tmp_path / "o.json")]) == 0
    loaded = load_backbone(weights)
    prompted = load_prompt(tmp_path / "p.safetensors", backbone=loaded)
    ot = load_vpr(tmp_path / "o.safetensors", backbone=loaded)
    images = _images(2)
    assert prompted.describe(images).shape == ot.describe(images).shape == (2, 32)
