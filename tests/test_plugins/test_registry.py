"""Registry, presets and the ``l2g_stream.extractors`` entry-point group."""

from __future__ import annotations

from typing import Any

import pytest

import plugins
import plugins.registry as registry
from plugins import (
    PRESETS,
    Extractor,
    PluginError,
    UnknownExtractorError,
    available,
    extractor_class,
    get_extractor,
    register,
)
from plugins.efficientnet import EfficientNetGeMExtractor
from plugins.rootsift import RootSiftExtractor
from plugins.toy import ToyExtractor
from plugins.xfeat import XFeatExtractor


class _FakeEntryPoint:
    def __init__(self, name: str, target: object) -> None:
        self.name, self.value, self._target = name, f"fake.module:{name}", target

    def load(self) -> object:
        return self._target


class _ThirdParty(ToyExtractor):
    name = "third-party"


def _fake_entry_points(*eps: _FakeEntryPoint) -> Any:
    def entry_points(*, group: str) -> list[_FakeEntryPoint]:
        assert group == plugins.ENTRY_POINT_GROUP
        return list(eps)

    return entry_points


class TestBuiltins:
    @pytest.mark.parametrize(("name", "cls"), [
        ("xfeat", XFeatExtractor), ("efficientnet-gem", EfficientNetGeMExtractor), ("rootsift", RootSiftExtractor),
        ("toy", ToyExtractor),
    ])
    def test_name_maps_to_class(self, name: str, cls: type[Extractor]) -> None:
        assert extractor_class(name) is cls
        extractor = get_extractor(name)
        assert isinstance(extractor, cls) and extractor.name == name
        assert extractor.local_dim >= 1 and extractor.global_dim >= 1

    def test_available_lists_builtins_and_presets_resolve(self) -> None:
        names = available()
        assert {"xfeat", "efficientnet-gem", "rootsift", "toy"} <= set(names)
        for preset in PRESETS.values():
            assert preset.extractor in names

    def test_construction_is_cheap(self) -> None:
        # No weights are read before setup(): a missing file only fails there.
        extractor = get_extractor("xfeat", weights="/nonexistent/xfeat.pt")
        assert extractor.local_dim == 64 and extractor.global_dim == 64

    def test_dimensions(self) -> None:
        assert (get_extractor("rootsift").local_dim, get_extractor("rootsift").global_dim) == (128, 1024)
        assert get_extractor("efficientnet-gem").global_dim == 1280
        assert get_extractor("xfeat", global_from="efficientnet").global_dim == 1280
        assert get_extractor("rootsift", global_from="efficientnet").global_dim == 1280


class TestPresets:
    def test_xfeat_fast(self) -> None:
        extractor = get_extractor("xfeat-fast")
        assert isinstance(extractor, XFeatExtractor)
        assert (extractor.opts.max_keypoints, extractor.opts.max_side) == (256, 480)

    def test_options_override_preset(self) -> None:
        extractor = get_extractor("xfeat-fast", max_keypoints=64)
        assert isinstance(extractor, XFeatExtractor)
        assert (extractor.opts.max_keypoints, extractor.opts.max_side) == (64, 480)

    def test_xfeat_effnet(self) -> None:
        extractor = get_extractor("xfeat-effnet")
        assert isinstance(extractor, XFeatExtractor)
        assert (extractor.local_dim, extractor.global_dim) == (64, 1280)

    def test_rootsift_1k(self) -> None:
        extractor = get_extractor("rootsift-1k")
        assert isinstance(extractor, RootSiftExtractor) and extractor.opts.max_keypoints == 1000

    def test_options_roundtrip(self) -> None:
        # options() holds every option: rebuilding from it gives the same options.
        for name in ("xfeat-fast", "xfeat-quality", "xfeat-effnet", "rootsift-1k", "efficientnet-gem"):
            extractor = get_extractor(name)
            assert get_extractor(extractor.name, **extractor.options()).options() == extractor.options()


class TestErrors:
    def test_unknown_name_lists_available(self) -> None:
        with pytest.raises(UnknownExtractorError, match="xfeat") as info:
            get_extractor("sift-but-wrong")
        assert "sift-but-wrong" in str(info.value)

    def test_unknown_option(self) -> None:
        with pytest.raises(PluginError, match="bad options for extractor 'xfeat'"):
            get_extractor("xfeat", max_keypoint=10)

    @pytest.mark.parametrize(("name", "options", "match"), [
        ("xfeat", {"max_keypoints": 0}, "max_keypoints"),
        ("xfeat", {"max_side": 16}, "max_side"),
        ("xfeat", {"detection_threshold": 1.5}, "detection_threshold"),
        ("xfeat", {"global_from": "resnet"}, "global_from"),
        ("xfeat", {"global_options": {"p": 3.0}}, "global_options"),
        ("xfeat", {"global_from": "efficientnet", "global_options": {"bogus": 1}}, "global_options"),
        ("xfeat", {"device": "tpu"}, "device"),
        ("efficientnet-gem", {"p": 0.5}, "p must"),
        ("efficientnet-gem", {"dimension": 64}, "needs whitening"),
        ("rootsift", {"max_keypoints": -1}, "max_keypoints"),
        ("rootsift", {"edge_threshold": 0}, "edge_threshold"),
    ])
    def test_bad_option_values(self, name: str, options: dict[str, Any], match: str) -> None:
        with pytest.raises(PluginError, match=match):
            extractor = get_extractor(name, **options)
            extractor.setup()


class TestEntryPoints:
    def test_third_party_entry_point(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(registry, "entry_points", _fake_entry_points(_FakeEntryPoint("third-party", _ThirdParty)))
        assert "third-party" in available()
        assert extractor_class("third-party") is _ThirdParty
        assert isinstance(get_extractor("third-party", max_features=8), _ThirdParty)

    def test_entry_point_that_is_not_an_extractor(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(registry, "entry_points", _fake_entry_points(_FakeEntryPoint("broken", dict)))
        with pytest.raises(PluginError, match="not an Extractor subclass"):
            get_extractor("broken")

    def test_builtins_win_over_entry_points(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(registry, "entry_points", _fake_entry_points(_FakeEntryPoint("xfeat", _ThirdParty)))
        assert extractor_class("xfeat") is XFeatExtractor

    def test_register_decorator(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(registry, "_REGISTERED", {})

        @register("mine")
        class Mine(ToyExtractor):
            name = "mine"

        assert extractor_class("mine") is Mine
        with pytest.raises(PluginError):
            register("bad")(int)  # type: ignore[arg-type]
