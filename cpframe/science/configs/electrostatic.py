"""The configuration of :mod:`cpframe.science.electrostatic` (``ElectrostaticConfig``), importable without the
science stack (module docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.electrostatic`
re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from cpframe.core.errors import ConfigError


#: Physical parameters (µm) of the model, then the linear scale and offset.
PARAMETERS = ("thickness", "pixelsize", "zq", "zsh", "zsv", "a", "b", "alpha", "beta")

_DEFAULT_INITIAL = {"thickness": 100.0, "pixelsize": 10.0, "zq": 1.0, "zsh": 2.0, "zsv": 3.0, "a": 2.0, "b": 2.0,
                    "alpha": 1.0, "beta": 0.0}

_DEFAULT_VARY = {"thickness": False, "pixelsize": False, "zq": True, "zsh": True, "zsv": True, "a": True, "b": True,
                 "alpha": True, "beta": True}


@dataclass(frozen=True)
class ElectrostaticConfig:
    """Settings (cp_pipe names in :data:`_ALIASES`)."""

    fit_range: int = 8
    """Lags fitted per axis (cp_pipe ``fitRange``); at most the PTC's full-covariance fit range."""
    initial_parameters: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_INITIAL))
    """Start values (cp_pipe ``initialParametersDict``)."""
    parameters_to_vary: Mapping[str, bool] = field(default_factory=lambda: dict(_DEFAULT_VARY))
    """Free parameters (cp_pipe ``parametersToVary``); the others stay at their start value."""
    n_image_charge_pairs: int = 11
    """Image charge pairs summed (cp_pipe ``nImageChargePairs``)."""
    do_normalize_electrostatic_model: bool = False
    """Rescale the final model (and offset it, ``doFitNormalizationOffset``) to the data."""
    do_fit_normalization_offset: bool = True
    """With the normalisation: fit an offset too."""

    def __post_init__(self):
        problems = []
        if self.fit_range < 2:
            problems.append(f"fitRange={self.fit_range} must be >= 2")
        for name, d in (("initialParametersDict", self.initial_parameters), ("parametersToVary", self.parameters_to_vary)):
            unknown = sorted(set(d) - set(PARAMETERS))
            if unknown:
                problems.append(f"{name} has unknown parameter(s) {', '.join(unknown)} (known: {', '.join(PARAMETERS)})")
        if problems:
            raise ConfigError("electrostatic brighter-fatter: " + "; ".join(problems) + ".")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ElectrostaticConfig:
        """From cp_pipe names (``fitRange``, ``initialParametersDict``...) or field names.

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or bad values.
        """
        from cpframe.science.options import alias_kwargs

        kw, _ = alias_kwargs(cls, values, _ALIASES,
                             "electrostatic brighter-fatter: unknown option(s) {keys}; known: {known}.")
        if "initial_parameters" in kw:
            kw["initial_parameters"] = {**_DEFAULT_INITIAL, **{str(a): float(b) for a, b in
                                                               dict(kw["initial_parameters"]).items()}}
        if "parameters_to_vary" in kw:
            kw["parameters_to_vary"] = {**_DEFAULT_VARY, **{str(a): bool(b) for a, b in
                                                             dict(kw["parameters_to_vary"]).items()}}
        return cls(**kw)


_ALIASES = {"fitRange": "fit_range", "initialParametersDict": "initial_parameters",
            "parametersToVary": "parameters_to_vary", "nImageChargePairs": "n_image_charge_pairs",
            "doNormalizeElectrostaticModel": "do_normalize_electrostatic_model",
            "doFitNormalizationOffset": "do_fit_normalization_offset"}
