"""Every knob of the resource controller's policy can be set from the environment (the chart's
operator.extraEnv), and a bad value names the variable, the knob and its default."""

from __future__ import annotations

from dataclasses import fields

import pytest
from agentscale.resource_controller.config import PolicyConfig, env_name


def test_every_knob_has_a_variable_and_they_are_distinct() -> None:
    names = [env_name(f.name) for f in fields(PolicyConfig)]
    assert len(set(names)) == len(names)
    assert env_name("idle_window_s") == "AGENTSCALE_RC_IDLE_WINDOW_SECONDS"
    assert env_name("startup_s") == "AGENTSCALE_RC_POD_STARTUP_SECONDS"
    assert env_name("max_up_pods") == "AGENTSCALE_RC_MAX_UP_PODS"


def test_values_from_the_environment_override_the_defaults_and_nothing_else() -> None:
    env = {
        "AGENTSCALE_RC_IDLE_WINDOW_SECONDS": "20",
        "AGENTSCALE_RC_COOLDOWN_DOWN_SECONDS": " 5 ",
        "AGENTSCALE_RC_MAX_UP_PODS": "8",
        "AGENTSCALE_RC_TARGET_UTILIZATION": "0.7",
        "AGENTSCALE_RC_PANIC_THRESHOLD": "",  # empty: the default
        "UNRELATED": "x",
    }
    cfg = PolicyConfig.from_env(env)
    assert (cfg.idle_window_s, cfg.cooldown_down_s, cfg.max_up_pods, cfg.target_utilization) == (
        20,
        5,
        8,
        0.7,
    )
    assert isinstance(cfg.max_up_pods, int)
    changed = {"idle_window_s", "cooldown_down_s", "max_up_pods", "target_utilization"}
    default = PolicyConfig()
    assert all(getattr(cfg, f.name) == getattr(default, f.name) for f in fields(cfg) if f.name not in changed)
    assert PolicyConfig.from_env({}) == default


@pytest.mark.parametrize(
    ("var", "bad", "message"),
    [
        (
            "AGENTSCALE_RC_IDLE_WINDOW_SECONDS",
            "soon",
            r"set idle_window_s in seconds, a number >= 0 \(unset: 300\)",
        ),
        ("AGENTSCALE_RC_IDLE_WINDOW_SECONDS", "-1", r"idle_window_s in seconds"),
        ("AGENTSCALE_RC_COOLDOWN_UP_SECONDS", "inf", r"cooldown_up_s in seconds"),
        (
            "AGENTSCALE_RC_MAX_UP_PODS",
            "2.5",
            r"set max_up_pods to a number >= 0 \(a whole number\) \(unset: 4\)",
        ),
        ("AGENTSCALE_RC_TOLERANCE", "nan", r"set tolerance to a number >= 0"),
        # in range for a number, out of range for the knob: the dataclass' own check, with the variable named
        (
            "AGENTSCALE_RC_TARGET_UTILIZATION",
            "1.5",
            r"target_utilization.*AGENTSCALE_RC_TARGET_UTILIZATION=1\.5",
        ),
        ("AGENTSCALE_RC_PANIC_THRESHOLD", "1", r"panic_threshold.*AGENTSCALE_RC_PANIC_THRESHOLD=1"),
    ],
)
def test_a_bad_value_names_the_variable_the_knob_and_the_default(var: str, bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        PolicyConfig.from_env({var: bad})
    assert var in str(err.value)
