"""``vitgal``: the XCiT/ViTGaL network written here, checkpoint layouts, keypoint selection and the extractor
contract. No ViTGaL weights exist here: every test builds a small seeded network and saves it."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plugins import PluginError, WeightsError, available, get_extractor
from plugins._vitgal_net import (
    ClassAttention,
    MultiAtrous,
    ViTGaLConfig,
    ViTGaLNet,
    XCABlock,
    convert_checkpoint,
    cross_covariance_attention,
)
from plugins.vitgal import ViTGaLExtractor, select_keypoints
from tests.test_plugins.support import check_features, textured_image

SMALL = {"embed_dim": 48, "depth": 2, "num_heads": 4, "local_dim": 16}


def _small_net(seed: int = 0, **overrides: Any) -> ViTGaLNet:
    torch.manual_seed(seed)
    net = ViTGaLNet(ViTGaLConfig(**{**SMALL, **overrides})).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics and LayerScale, as a trained file would have
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 0.1)
            elif "gamma" in name:
                tensor.uniform_(0.2, 1.0)
    return net


def _to_authors_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This module's names -> the authors' ``XCiTRetrievalLocalReductionAE`` names (the inverse of the mapping the
    plugin documents), plus the heads their file carries."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out["retrieval_back_bone." + key[len("backbone."):]] = value
        elif key.startswith("autoencoder.encoder."):
            out["whitening_layer." + key[len("autoencoder.encoder."):]] = value
        elif key.startswith("autoencoder.decoder."):
            out["ae_decoder_layer." + key[len("autoencoder.decoder."):]] = value
        else:
            out[key[len("autoencoder."):]] = value
    c = state["backbone.cls_token"].shape[-1]
    out["retrieval_back_bone.head.weight"] = torch.zeros(7, c)  # their ArcFace
    out["head.weight"], out["head.bias"] = torch.zeros(7, c), torch.zeros(7)
    return out


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vitgal") / "checkpoint.pth"
    torch.save({"model": _to_authors_layout(_small_net().state_dict()), "epoch": 24,
                "args": argparse.Namespace(model="xcit_retrievalv2_reduction_ae")}, path)
    return path


@pytest.fixture(scope="module")
def vitgal(small_file: Path) -> Any:
    extractor = get_extractor("vitgal", device="cpu", weights=str(small_file), **SMALL)
    extractor.setup()
    yield extractor
    extractor.close()


# ------------------------------------------------------------------------------------------- network


class TestNetwork:
    @pytest.mark.slow  # builds the full XCiT-S12 (on the meta device: shapes only)
    def test_default_is_xcit_s12_16_with_the_authors_parameter_names(self) -> None:
        with torch.device("meta"):
            state = ViTGaLNet().state_dict()
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        assert shapes["backbone.patch_embed.proj.0.0.weight"] == (48, 3, 3, 3)
        assert shapes["backbone.patch_embed.proj.6.0.weight"] == (384, 192, 3, 3)
        assert "backbone.patch_embed.proj.6.1.running_var" in shapes
        assert shapes["backbone.pos_embeder.token_projection.weight"] == (384, 64, 1, 1)
        assert shapes["backbone.blocks.11.attn.temperature"] == (8, 1, 1)
        assert shapes["backbone.blocks.11.attn.qkv.weight"] == (1152, 384)
        assert shapes["backbone.blocks.0.local_mp.conv1.weight"] == (384, 1, 3, 3)
        assert "backbone.blocks.12.norm1.weight" not in shapes
        assert [shapes[f"backbone.local_atrous.dilated_convs.{i}.weight"] for i in range(5)] == [(64, 384, 3, 3)] * 5
        assert shapes["backbone.local_atrous.gap_branch.1.weight"] == (64, 384, 1, 1)
        assert shapes["backbone.local_atrous.depthwise.weight"] == (384, 1, 3, 3)
        assert shapes["backbone.cls_attn_blocks.0.attn.qkv.weight"] == (1152, 384)
        assert "backbone.cls_attn_blocks.1.norm1.weight" not in shapes  # one class-attention layer
        assert shapes["autoencoder.encoder.weight"] == (128, 384)
        assert shapes["autoencoder.decoder.weight"] == (384, 128)
        assert shapes["autoencoder.cls_token"] == (1, 1, 384)

    def test_output_shapes(self) -> None:
        net = _small_net()
        with torch.no_grad():
            out = net(torch.randn(2, 3, 64, 96))
        assert out.grid == (4, 6)
        assert out.global_descriptor.shape == (2, 48) and out.global_descriptor.dtype == torch.float32
        assert out.tokens.shape == (2, 24, 48) and out.local.shape == (2, 24, 16)
        assert out.attention.shape == (2, 4, 24) and out.ae_attention is not None
        assert out.ae_attention.shape == (2, 4, 24)
        # The attention of the CLS query is a softmax over CLS + patches: the patches get less than 1 in total.
        total = out.attention.sum(-1)
        assert bool(((total > 0) & (total < 1)).all())

    def test_without_autoencoder_the_tokens_are_the_locals(self) -> None:
        net = _small_net(local_dim=None)
        with torch.no_grad():
            out = net(torch.randn(1, 3, 48, 48))
        assert out.ae_attention is None and out.local is out.tokens and net.config.descriptor_dim == 48

    def test_multi_atrous_branches(self) -> None:
        block = MultiAtrous(48, (1, 3, 6, 9, 12), 4.0, 1.0)
        assert [c.out_channels for c in block.dilated_convs] == [8] * 5
        assert [c.dilation for c in block.dilated_convs] == [(r, r) for r in (1, 3, 6, 9, 12)]
        gap = block.gap_branch[1]
        assert isinstance(gap, torch.nn.Conv2d) and gap.out_channels == 8
        x = torch.randn(2, 12, 48)
        assert block.eval()(x, (3, 4)).shape == (2, 12, 48)

    def test_class_attention_passes(self) -> None:
        once, twice = _small_net(class_attention_passes=1), _small_net(class_attention_passes=2)
        twice.load_state_dict(once.state_dict())
        x = torch.randn(1, 3, 48, 64)
        with torch.no_grad():
            a, b = once(x), twice(x)
        assert not torch.allclose(a.global_descriptor, b.global_descriptor)

    def test_bad_configs(self) -> None:
        with pytest.raises(ValueError, match="multiple of 8"):
            ViTGaLConfig(embed_dim=44, num_heads=4)
        with pytest.raises(ValueError, match="class_attention_passes"):
            ViTGaLConfig(class_attention_passes=3)


class TestAgainstDirectImplementations:
    def test_cross_covariance_attention_matches_a_loop(self) -> None:
        g = torch.Generator().manual_seed(1)
        b, h, d, n = 2, 3, 4, 5
        q, k, v = (torch.randn(b, h, d, n, generator=g, dtype=torch.float64) for _ in range(3))
        temperature = torch.rand(h, 1, 1, generator=g, dtype=torch.float64) + 0.5
        got = cross_covariance_attention(q, k, v, temperature)
        want = torch.zeros_like(v)
        for bi in range(b):
            for hi in range(h):
                qn = [q[bi, hi, i] / math.sqrt(float((q[bi, hi, i] ** 2).sum())) for i in range(d)]
                kn = [k[bi, hi, j] / math.sqrt(float((k[bi, hi, j] ** 2).sum())) for j in range(d)]
                for i in range(d):
                    logits = [float(temperature[hi, 0, 0]) * float((qn[i] * kn[j]).sum()) for j in range(d)]
                    top = max(logits)
                    weights = [math.exp(x - top) for x in logits]
                    total = sum(weights)
                    for j in range(d):
                        want[bi, hi, i] += weights[j] / total * v[bi, hi, j]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    def test_xca_module_matches_einsum(self) -> None:
        torch.manual_seed(2)
        block = XCABlock(12, 3, 2.0, 1.0).double()
        xca = block.attn
        x = torch.randn(2, 7, 12, dtype=torch.float64)
        qkv = torch.einsum("bnc,oc->bno", x, xca.qkv.weight) + xca.qkv.bias
        q, k, v = (qkv[..., i * 12 : (i + 1) * 12].reshape(2, 7, 3, 4) for i in range(3))  # (B, N, h, d)
        qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)  # along the tokens
        attn = (torch.einsum("bnhi,bnhj->bhij", qn, kn) * xca.temperature).softmax(-1)
        mixed = torch.einsum("bhij,bnhj->bnhi", attn, v).reshape(2, 7, 12)
        want = torch.einsum("bnc,oc->bno", mixed, xca.proj.weight) + xca.proj.bias
        torch.testing.assert_close(xca(x), want)

    def test_class_attention_matches_a_direct_implementation(self) -> None:
        torch.manual_seed(3)
        c, h = 8, 2
        d = c // h
        layer = ClassAttention(c, h).double()
        x = torch.randn(2, 6, c, dtype=torch.float64)  # CLS + 5 patches
        got, attn = layer(x)
        w, bias = layer.qkv.weight, layer.qkv.bias
        for bi in range(2):
            heads = []
            for hi in range(h):
                rows = slice(hi * d, (hi + 1) * d)
                q = w[:c][rows] @ x[bi, 0] + bias[:c][rows]
                keys = [w[c : 2 * c][rows] @ x[bi, n] + bias[c : 2 * c][rows] for n in range(6)]
                vals = [w[2 * c :][rows] @ x[bi, n] + bias[2 * c :][rows] for n in range(6)]
                logits = torch.stack([(q * key).sum() / math.sqrt(d) for key in keys])
                a = torch.exp(logits - logits.max())
                a = a / a.sum()
                torch.testing.assert_close(attn[bi, hi], a)
                heads.append(torch.stack([a[n] * vals[n] for n in range(6)]).sum(0))
            cls = layer.proj.weight @ torch.cat(heads) + layer.proj.bias
            torch.testing.assert_close(got[bi, 0], cls)
        assert torch.equal(got[:, 1:], x[:, 1:])  # patch tokens are keys and values only


# ------------------------------------------------------------------------------------------- checkpoints


class TestCheckpoints:
    def test_authors_layout_maps_onto_the_network(self) -> None:
        state = _small_net().state_dict()
        converted = convert_checkpoint(_to_authors_layout(state))
        assert set(converted) == set(state)
        assert all(torch.equal(converted[k], state[k]) for k in state)
        ddp = {f"module.{k}": v for k, v in _to_authors_layout(state).items()}
        assert set(convert_checkpoint(ddp)) == set(state)

    def test_backbone_only_layout(self) -> None:
        state = _small_net(local_dim=None).state_dict()
        plain = {k[len("backbone."):]: v for k, v in state.items()}
        plain["head.weight"] = torch.zeros(3, 48)
        assert set(convert_checkpoint(plain)) == set(state)

    def test_round_trip_through_the_extractor(self, vitgal: Any, tmp_path: Path) -> None:
        # The authors' file (module fixture) and this module's own state dict give the same features.
        own = tmp_path / "own.pt"
        torch.save(_small_net().state_dict(), own)
        other = get_extractor("vitgal", device="cpu", weights=str(own), **SMALL)
        frame = textured_image(4, 96, 128)[None]
        (a,), (b,) = vitgal.extract(frame), other.extract(frame)
        np.testing.assert_array_equal(a.descriptors, b.descriptors)
        np.testing.assert_array_equal(a.global_descriptor, b.global_descriptor)
        # and the loaded network is the saved one
        net = _small_net()
        for key, value in net.state_dict().items():
            assert torch.equal(vitgal._net.state_dict()[key], value), key

    def test_missing_weights_are_a_clear_error(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsError, match="vitgal needs weights"):
            get_extractor("vitgal")
        extractor = get_extractor("vitgal", weights=str(tmp_path / "nope.pth"), device="cpu")
        with pytest.raises(WeightsError, match="do not exist"):
            extractor.setup()

    def test_a_file_for_another_architecture_is_refused(self, small_file: Path, tmp_path: Path) -> None:
        with pytest.raises(WeightsError, match="does not match"):
            get_extractor("vitgal", device="cpu", weights=str(small_file), **{**SMALL, "depth": 3}).setup()
        junk = tmp_path / "junk.pth"
        junk.write_bytes(b"not a checkpoint")
        with pytest.raises(WeightsError, match="cannot read"):
            get_extractor("vitgal", device="cpu", weights=str(junk), **SMALL).setup()

    def test_identity_holds_the_weights_sha256(self, vitgal: Any, small_file: Path) -> None:
        import hashlib

        ident = vitgal.snapshot_identity()
        assert ident["extractor"] == "vitgal"
        assert ident["options"]["weights"] == "sha256:" + hashlib.sha256(small_file.read_bytes()).hexdigest()
        assert "fp16" not in ident["options"] and ident["options"]["depth"] == 2


# ------------------------------------------------------------------------------------------- extractor


class TestExtractor:
    def test_registered_and_options_checked(self) -> None:
        assert "vitgal" in available()
        with pytest.raises(PluginError, match="keypoint_attention"):
            get_extractor("vitgal", weights="x.pth", local_dim=None)
        with pytest.raises(PluginError, match="multiple of 8"):
            get_extractor("vitgal", weights="x.pth", embed_dim=44, num_heads=4)
        ext = get_extractor("vitgal", weights="x.pth", local_dim=None, keypoint_attention="backbone")
        assert isinstance(ext, ViTGaLExtractor) and (ext.local_dim, ext.global_dim) == (384, 384)

    def test_output_contract(self, vitgal: Any) -> None:
        frame = textured_image(1)  # 240 x 320: a 15 x 20 patch grid, no resizing at max_side 512
        (f,) = vitgal.extract(frame[None])
        check_features(f, 16, 48, (240, 320))
        assert 0 < f.num_features <= 300
        assert np.all(np.diff(f.scores) <= 0) and np.all(f.scores > vitgal.opts.score_threshold)
        np.testing.assert_array_equal(np.mod(f.keypoints, 16.0), np.full_like(f.keypoints, 7.5))  # patch centres

    def test_top_k_by_attention(self, vitgal: Any, small_file: Path) -> None:
        frame = textured_image(2)
        scores = vitgal.attention_map(frame[None])[0]  # (15, 20)
        assert scores.shape == (15, 20) and abs(float(scores.mean()) - 1.0) < 1e-5
        (f,) = vitgal.extract(frame[None])
        above = np.sort(scores[scores > vitgal.opts.score_threshold].ravel())[::-1]
        np.testing.assert_allclose(f.scores, above, rtol=1e-6)
        cells = (f.keypoints - 7.5) / 16.0
        np.testing.assert_allclose(scores[cells[:, 1].astype(int), cells[:, 0].astype(int)], f.scores, rtol=1e-6)

        top5 = get_extractor("vitgal", device="cpu", weights=str(small_file), max_keypoints=5, score_threshold=0.0,
                             **SMALL)
        (g,) = top5.extract(frame[None])
        np.testing.assert_allclose(g.scores, np.sort(scores.ravel())[::-1][:5], rtol=1e-6)
        none = get_extractor("vitgal", device="cpu", weights=str(small_file), score_threshold=1e6, **SMALL)
        (e,) = none.extract(frame[None])
        assert e.num_features == 0 and e.descriptors.shape == (0, 16)

    def test_select_keypoints_on_a_known_attention(self) -> None:
        attn = torch.tensor([[[0.1, 0.4, 0.2, 0.3], [0.2, 0.2, 0.4, 0.2]]])  # (1 frame, 2 heads, 4 patches)
        scores, idx = select_keypoints(attn, 3, 0.9)
        # head-max normalised: [.25, 1, .5, .75] and [.5, .5, 1, .5]; mean [.375, .75, .75, .625] -> / .625
        torch.testing.assert_close(scores, torch.tensor([[1.2, 1.2, 1.0]]))
        assert sorted(idx[0, :2].tolist()) == [1, 2] and idx[0, 2].item() == 3
        scores, _ = select_keypoints(attn, 4, 1.1)
        assert scores[0].tolist()[2:] == [-1.0, -1.0]

    def test_deterministic_and_batch_equals_single(self, vitgal: Any) -> None:
        frames = np.stack([textured_image(5), textured_image(6)])
        a, b = vitgal.extract(frames), vitgal.extract(frames)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.descriptors, y.descriptors)
            np.testing.assert_array_equal(x.scores, y.scores)
        single = vitgal.extract(frames[1:])[0]
        np.testing.assert_allclose(single.global_descriptor, a[1].global_descriptor, atol=1e-5)
        np.testing.assert_allclose(single.keypoints, a[1].keypoints)

    def test_frames_are_resized_to_a_multiple_of_16(self, small_file: Path) -> None:
        ext = get_extractor("vitgal", device="cpu", weights=str(small_file), max_side=100, **SMALL)
        (f,) = ext.extract(textured_image(7, 150, 201)[None])  # -> 74.6 x 100 -> 64 x 96: a 4 x 6 grid
        check_features(f, 16, 48, (150, 201))
        assert f.num_features <= 24
