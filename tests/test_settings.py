from __future__ import annotations

from pathlib import Path

import pytest

from kappaflow.app import load_apps
from kappaflow.apps.video.app import VideoSettings
from kappaflow.errors import SettingsError
from kappaflow.settings import Rule, Scaling, Settings


def test_defaults() -> None:
    settings = Settings.load({})
    assert settings.partitions == 8
    assert settings.log_fsync == "batch"
    assert settings.apps == ()  # every installed app


def test_environment_overrides_toml_and_options_override_environment(tmp_path: Path) -> None:
    config = tmp_path / "kappaflow.toml"
    config.write_text('partitions = 4\napps = ["video", "my.app"]\n[video]\nsession_gap_s = 20\n')
    environ = {"KAPPAFLOW_CONFIG": str(config), "KAPPAFLOW_PARTITIONS": "6"}
    settings = Settings.load(environ, overrides={"data_dir": "/x"})
    assert settings.partitions == 6
    assert settings.app("video", VideoSettings).session_gap_s == 20.0
    assert settings.apps == ("video", "my.app")
    assert settings.data_dir == "/x"
    assert Settings.load({"KAPPAFLOW_APPS": "video, clicks"}).apps == ("video", "clicks")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KAPPAFLOW_PARTITIONS": "eight"}, "KAPPAFLOW_PARTITIONS must be an integer, got 'eight'"),
        ({"KAPPAFLOW_PARTITIONS": "0"}, "KAPPAFLOW_PARTITIONS must be an integer >= 1, got '0'"),
        ({"KAPPAFLOW_LOG_FSYNC": "often"}, "KAPPAFLOW_LOG_FSYNC must be one of batch, never"),
        ({"KAPPAFLOW_MIN_REPLICAS": "-1"}, "KAPPAFLOW_MIN_REPLICAS must be an integer >= 0"),
        ({"KAPPAFLOW_SCALE_UP_POLICIES": "pods:4"}, "KAPPAFLOW_SCALE_UP_POLICIES must be like"),
    ],
)
def test_invalid_values_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load(environ)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KAPPAFLOW_VIDEO_SESSION_GAP_S": "-1"},
         "KAPPAFLOW_VIDEO_SESSION_GAP_S must be a number > 0"),
        ({"KAPPAFLOW_VIDEO_SESSION_GAPS": "9"},
         "unknown setting KAPPAFLOW_VIDEO_SESSION_GAPS; app 'video' has "
         "KAPPAFLOW_VIDEO_SESSION_GAP_S, KAPPAFLOW_VIDEO_PROGRESS_ACCURACY_S"),
        ({"KAPPAFLOW_PARTITONS": "8"}, "unknown setting KAPPAFLOW_PARTITONS; known settings: "),
        ({"KAPPAFLOW_SCALING": "{}"}, "unknown setting KAPPAFLOW_SCALING"),
        ({"KAPPAFLOW_CLICKS_SESSION_GAP_S": "9"}, "unknown setting KAPPAFLOW_CLICKS_SESSION_GAP_S"),
    ],
)  # fmt: skip
def test_apps_settings_are_checked_as_the_cores_when_the_apps_load(
    environ: dict[str, str], message: str
) -> None:
    """An app's settings are ``<app>_<name>``; one it lacks, or a name that is no one's,
    is refused when the apps load, naming the variable and the known ones."""
    settings = Settings.load(environ)
    with pytest.raises(SettingsError) as caught:
        load_apps(settings)
    assert message in str(caught.value)
    if "known settings" in message:
        assert "KAPPAFLOW_PARTITIONS" in str(caught.value)
        assert "KAPPAFLOW_VIDEO_SESSION_GAP_S" in str(caught.value)


def test_an_apps_settings_are_read_from_the_environment_a_table_and_replace() -> None:
    environ = {"KAPPAFLOW_VIDEO_PROGRESS_ACCURACY_S": "0"}
    settings = Settings.load(environ, {"partitions": 2})
    (video,) = [app for app in load_apps(settings) if app.name == "video"]
    assert video.settings == VideoSettings(session_gap_s=10.0, progress_accuracy_s=0.0)
    changed = settings.replace(video_session_gap_s=30)
    assert changed.app("video", VideoSettings) == VideoSettings(
        session_gap_s=30.0, progress_accuracy_s=0.0
    )
    assert Settings.load(changed.to_environ()).app("video", VideoSettings) == changed.app(
        "video", VideoSettings
    )


def test_bad_toml_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("partitions = \n")
    with pytest.raises(SettingsError, match=r"bad\.toml is not valid TOML"):
        Settings.load({"KAPPAFLOW_CONFIG": str(config)})
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.load({"KAPPAFLOW_CONFIG": str(tmp_path / "missing.toml")})
    config.write_text("colour = 'blue'\n")
    with pytest.raises(SettingsError, match="unknown setting colour in"):
        load_apps(Settings.load({"KAPPAFLOW_CONFIG": str(config)}))


def test_settings_survive_the_round_trip_through_the_environment() -> None:
    overrides = {"apps": ("video", "my.app"), "partitions": 3, "allowed_lateness_s": 2.5}
    settings = Settings.load({}, {**overrides, "log_fsync": "never"})
    assert Settings.load(settings.to_environ()) == settings


def test_the_scaling_policys_settings_are_settings_of_their_own_names(tmp_path: Path) -> None:
    """The policy's settings are the ones `Settings` holds, with kappaflow's defaults
    (not KEDA's lagThreshold 10 and minReplicaCount 0), each under its own name."""
    assert Settings().scaling == Scaling(lag_threshold=20_000, min_replicas=1)
    config = tmp_path / "kappaflow.toml"
    config.write_text('lag_threshold = 500\nscale_down_policies = "pods:1:60"\n')
    environ = {"KAPPAFLOW_CONFIG": str(config), "KAPPAFLOW_MIN_REPLICAS": "0",
               "KAPPAFLOW_SCALE_UP_POLICIES": "pods:2:30, percent:50:60"}  # fmt: skip
    scaling = Settings.load(environ).scaling
    assert (scaling.lag_threshold, scaling.min_replicas) == (500, 0)
    assert scaling.scale_up_policies == (Rule("pods", 2, 30), Rule("percent", 50, 60))
    assert scaling.scale_down_policies == (Rule("pods", 1, 60),)
    settings = Settings.load({}, {"partitions": 3}).replace(max_replicas=7, behavior=True)
    assert (settings.partitions, settings.scaling.max_replicas) == (3, 7)
    assert settings.scaling.behavior and not Settings().scaling.behavior
    loaded = Settings.load(environ)
    variables = loaded.to_environ()
    assert variables["KAPPAFLOW_SCALE_UP_POLICIES"] == "pods:2:30,percent:50:60"
    assert "KAPPAFLOW_SCALING" not in variables
    assert Settings.load(variables) == loaded
