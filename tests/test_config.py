import subprocess
import sys

import pytest

from oxyd.config import EXIT_CONFIG, ConfigError, load


def test_defaults_need_no_file():
    cfg = load(env={})
    assert str(cfg.data_dir) == "data"
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 8780)
    assert cfg.supervisor.backoff_base_s == 2 and cfg.supervisor.backoff_cap_s == 300
    assert cfg.store.batch_max == 1000


def test_yaml_then_env_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("http:\n  port: 9000\nsupervisor:\n  heartbeat_s: 5\n")
    cfg = load(f, env={"OXYD_SUPERVISOR_HEARTBEAT_S": "0.5", "OXYD_DATA_DIR": "/srv/x"})
    assert cfg.http.port == 9000
    assert cfg.supervisor.heartbeat_s == 0.5  # env wins, fractions accepted
    assert str(cfg.data_dir) == "/srv/x"


def test_config_file_from_env_variable(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("log:\n  format: json\n")
    assert load(env={"OXYD_CONFIG": str(f)}).log.format == "json"


@pytest.mark.parametrize(
    ("yaml_text", "env", "message"),
    [
        ("http:\n  port: 70000\n", {}, "http.port: must be an integer between 1 and 65535"),
        ("http:\n  port: abc\n", {}, "http.port: must be an integer"),
        ("http:\n  portt: 1\n", {}, "http.portt: unknown key"),
        ("nope: 1\n", {}, "nope: unknown key"),
        ("supervisor:\n  heartbeat_s: -1\n", {}, "supervisor.heartbeat_s: must be a positive"),
        ("log:\n  format: xml\n", {}, "log.format: must be 'text' or 'json'"),
        ("webhooks:\n  url: ftp://x\n", {}, "webhooks.url: must be an http"),
        ("webhooks:\n  url: https://x\n", {}, "webhooks.secret: is required"),
        ("webhooks:\n  events: [foo]\n", {}, "webhooks.events: unknown event type"),
        ("backup:\n  schedule: 'not cron'\n", {}, "backup.schedule: not a valid cron"),
        ("http: 5\n", {}, "http: must be a mapping"),
        ("", {"OXYD_HTTP_PORT": "x"}, "http.port: must be an integer"),
        ("", {"OXYD_STORE_BATCHMAX": "1"}, "store.batchmax: unknown key"),
        ("- a\n- b\n", {}, "must be a mapping"),
        ("http: [\n", {}, "not valid YAML"),
    ],
)
def test_errors_name_their_key(tmp_path, yaml_text, env, message):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load(f, env=env)
    assert message in str(e.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load(tmp_path / "missing.yaml", env={})


def test_bad_config_exits_78_and_check_config_masks_secrets(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("http:\n  port: 0\n")
    r = subprocess.run(
        [sys.executable, "-m", "oxyd", "--config", str(bad), "check-config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == EXIT_CONFIG
    assert "http.port" in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text("webhooks:\n  url: https://example.test/h\n  secret: s3cr3t-value-xyz\n")
    r = subprocess.run(
        [sys.executable, "-m", "oxyd", "--config", str(good), "check-config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert "s3cr3t-value-xyz" not in r.stdout
    assert '"secret": "***"' in r.stdout


def test_neonize_section_hosts_proxy_recycling():
    cfg = load(env={})
    assert (cfg.neonize.hosts, cfg.neonize.tenants_per_host, cfg.neonize.proxy) == (0, 64, None)
    assert cfg.neonize.recycle_fds is None and cfg.neonize.recycle_rss_mb is None
    env = {
        "OXYD_NEONIZE_HOSTS": "8",
        "OXYD_NEONIZE_TENANTS_PER_HOST": "128",
        "OXYD_NEONIZE_PROXY": "socks5://user:s3cret@127.0.0.1:1080",
        "OXYD_NEONIZE_RECYCLE_FDS": "4096",
        "OXYD_NEONIZE_RECYCLE_RSS_MB": "1024",
    }
    cfg = load(env=env)
    assert (cfg.neonize.hosts, cfg.neonize.tenants_per_host) == (8, 128)
    assert (cfg.neonize.recycle_fds, cfg.neonize.recycle_rss_mb) == (4096, 1024.0)
    shown = cfg.as_dict()["neonize"]["proxy"]
    assert shown == "socks5://user:***@127.0.0.1:1080" and "s3cret" not in str(cfg.as_dict())
    for key, value, message in (
        ("HOSTS", "-1", "neonize.hosts"),
        ("TENANTS_PER_HOST", "0", "neonize.tenants_per_host"),
        ("PROXY", "ftp://127.0.0.1:21", "neonize.proxy"),
        ("PROXY", "http://127.0.0.1", "neonize.proxy: needs a port"),
        ("RECYCLE_FDS", "10", "neonize.recycle_fds"),
    ):
        with pytest.raises(ConfigError, match=message):
            load(env={f"OXYD_NEONIZE_{key}": value})
