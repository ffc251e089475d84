"""site.toml: one file per node, validated at node start with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedlora.cli.main import main as fedlora_main
from fedlora.deploy import commands as deploy
from fedlora.deploy.flower_values import node_config_value
from fedlora.deploy.site_config import load_site_config
from fedlora.errors import ConfigError
from fedlora.pki import commands as pki


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    pki.init_ca(directory)
    pki.issue_server_cert(directory, ip_addresses=["127.0.0.1"])
    pki.create_site_key(directory, "site-a")
    return directory


def _site(tmp_path: Path, pki_dir: Path, **tables: str) -> Path:
    """Write a valid site.toml (relative paths) with any table replaced by ``tables``."""
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "q", "response": "a"}\n')
    parts = {
        "site": 'name = "site-a"\ntrain-file = "data/train.jsonl"\ndevice = "cpu"\n',
        "privacy": 'budget-epsilon = 8.0\nledger-dir = "ledger"\n',
        "connection": (
            'superlink = "127.0.0.1:9093"\n'
            f'root-certificates = "{pki_dir / "ca.pem"}"\n'
            f'auth-private-key = "{pki_dir / "sites" / "site-a.key"}"\n'
        ),
    }
    parts.update(tables)
    path = tmp_path / "site.toml"
    path.write_text("".join(f"[{name}]\n{body}\n" for name, body in parts.items()))
    return path


def test_valid_config_resolves_relative_paths_against_its_folder(tmp_path, pki_dir):
    config = load_site_config(_site(tmp_path, pki_dir))

    assert config.train_file == tmp_path / "data" / "train.jsonl"
    assert config.ledger_dir == tmp_path / "ledger"
    assert config.ledger_dir.is_dir()
    assert config.budget_epsilon == 8.0
    assert config.delta is None
    assert config.device == "cpu"


def test_node_config_round_trips_through_flowers_parser(tmp_path, pki_dir):
    odd = tmp_path / "it's a folder with spaces=and\\slashes"
    odd.mkdir()
    config = load_site_config(
        _site(
            odd,
            pki_dir,
            privacy='budget-epsilon = 3\ndelta = 1e-5\nledger-dir = "led ger"\nsecure-rng = true\n',
        )
    )

    parsed = parse_config_args([config.to_node_config()])

    assert parsed == {
        "site-name": "site-a",
        "train-file": str(odd / "data" / "train.jsonl"),
        "budget-epsilon": 3.0,
        "ledger-dir": str(odd / "led ger"),
        "delta": 1e-5,
        "secure-rng": True,
        "device": "cpu",
    }


def test_a_value_with_both_quote_kinds_is_refused():
    with pytest.raises(ConfigError, match="both ' and"):
        node_config_value("""a'b"c""")


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"site": 'name = "site-a"\ntrain-file = "data/train.jsonl"\ncolour = 1\n'}, "unknown key"),
        ({"site": 'name = "site-a"\n'}, r"\[site\] train-file is required"),
        ({"site": 'name = "site-a"\ntrain-file = "nope.jsonl"\n'}, "does not exist"),
        ({"site": 'name = "a b"\ntrain-file = "data/train.jsonl"\n'}, "name must be"),
        (
            {"site": 'name = "site-a"\ntrain-file = "data/train.jsonl"\ndevice = "tpu"\n'},
            "device must be one of",
        ),
        (
            {"site": 'name = "site-a"\ntrain-file = "data/train.jsonl"\ncpu-threads = 0\n'},
            "cpu-threads must be an integer >= 1",
        ),
        (
            {"site": 'name = "site-a"\ntrain-file = "data/train.jsonl"\ncpu-threads = 1.5\n'},
            "cpu-threads must be an integer >= 1",
        ),
        (
            {"site": 'name = "site-a"\ntrain-file = "data/train.jsonl"\nlora-rank = 0\n'},
            "lora-rank must be an integer >= 1",
        ),
        ({"privacy": 'budget-epsilon = "8"\nledger-dir = "l"\n'}, "must be a number"),
        ({"privacy": 'budget-epsilon = 0\nledger-dir = "l"\n'}, "budget-epsilon must be > 0"),
        ({"privacy": 'budget-epsilon = -1.5\nledger-dir = "l"\n'}, "budget-epsilon must be > 0"),
        ({"privacy": 'budget-epsilon = 1\nledger-dir = "l"\ndelta = 1\n'}, r"delta must be in"),
        ({"privacy": 'budget-epsilon = 1\nledger-dir = "l"\ndelta = 0\n'}, r"delta must be in"),
        ({"privacy": 'budget-epsilon = 1\nledger-dir = "l"\nsecure-rng = 1\n'}, "true or false"),
        ({"privacy": "budget-epsilon = 1\n"}, r"ledger-dir is required"),
        ({"connection": 'superlink = "https://x:1"\n'}, "HOST:PORT"),
        ({"connection": 'superlink = "x:99999"\n'}, "port must be"),
        ({"connection": 'superlink = "x:1"\n'}, "root-certificates is missing"),
        ({"connection": 'superlink = "x:1"\ninsecure = true\n'}, "pass --insecure"),
        ({"extra": "a = 1\n"}, "unknown table"),
    ],
)
def test_invalid_values_are_refused_in_one_line(tmp_path, pki_dir, tables, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_site_config(_site(tmp_path, pki_dir, **tables))
    assert "\n" not in str(error.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_site_config(tmp_path / "site.toml")
    (tmp_path / "bad.toml").write_text("[site\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_site_config(tmp_path / "bad.toml")


def test_key_file_readable_by_others_is_refused(tmp_path, pki_dir):
    key = tmp_path / "copy.key"
    key.write_bytes((pki_dir / "sites" / "site-a.key").read_bytes())
    key.chmod(0o644)
    connection = (
        f'superlink = "h:1"\nroot-certificates = "{pki_dir / "ca.pem"}"\n'
        'auth-private-key = "copy.key"\n'
    )

    with pytest.raises(ConfigError, match="mode 0644; it must be 0600"):
        load_site_config(_site(tmp_path, pki_dir, connection=connection))


def test_root_certificate_must_exist_and_be_pem(tmp_path, pki_dir):
    (tmp_path / "junk.pem").write_text("not a certificate")
    key = pki_dir / "sites" / "site-a.key"
    for cert, message in (("missing.pem", "does not exist"), ("junk.pem", "not a PEM")):
        connection = (
            f'superlink = "h:1"\nroot-certificates = "{cert}"\nauth-private-key = "{key}"\n'
        )
        with pytest.raises(ConfigError, match=message):
            load_site_config(_site(tmp_path, pki_dir, connection=connection))


def test_ledger_dir_that_is_a_file_is_refused(tmp_path, pki_dir):
    (tmp_path / "ledger-file").write_text("")
    privacy = 'budget-epsilon = 1\nledger-dir = "ledger-file"\n'

    with pytest.raises(ConfigError, match=r"ledger-dir .* cannot be created"):
        load_site_config(_site(tmp_path, pki_dir, privacy=privacy))


def test_insecure_needs_the_explicit_flag(tmp_path, pki_dir):
    path = _site(tmp_path, pki_dir, connection='superlink = "h:1"\ninsecure = true\n')

    config = load_site_config(path, allow_insecure=True)

    argv = deploy.supernode_argv(config, runtime_port=9999)
    assert "--insecure" in argv and "--root-certificates" not in argv


def test_supernode_command_uses_tls_key_and_node_config(tmp_path, pki_dir):
    config = load_site_config(_site(tmp_path, pki_dir))

    argv = deploy.supernode_argv(config, runtime_port=9999)

    assert argv[argv.index("--root-certificates") + 1] == str(pki_dir / "ca.pem")
    key = argv[argv.index("--auth-supernode-private-key") + 1]
    assert key == str(pki_dir / "sites" / "site-a.key")
    assert argv[argv.index("--port") + 1] == "9999"
    node = parse_config_args([argv[argv.index("--node-config") + 1]])
    assert node["ledger-dir"] == str(tmp_path / "ledger")
    assert config.supernode_environment() == {"CUDA_VISIBLE_DEVICES": ""}


def test_supernode_is_warm_by_default_and_plain_flower_when_cold(tmp_path, pki_dir):
    config = load_site_config(_site(tmp_path, pki_dir))

    warm = deploy.supernode_argv(config, runtime_port=9999, poll_interval=0.1)
    cold = deploy.supernode_argv(config, runtime_port=9999, warm=False)

    flower_args = warm[warm.index("--") + 1 :]
    assert warm[1:7] == [
        "-m",
        "fedlora.flower_internals.node_supernode",
        "--poll-interval",
        "0.1",
        "--worker",
        "--",
    ]
    assert Path(cold[0]).name == "flower-supernode" and "--worker" not in cold
    # the same Flower arguments either way; the warm node's executor is its worker
    assert flower_args == [*cold[1:], "--isolation", "process"]
    with pytest.raises(ConfigError, match="poll interval"):
        deploy.supernode_argv(config, runtime_port=9999, poll_interval=10.0)


def test_cpu_threads_caps_torch_threads_on_the_node(tmp_path, pki_dir):
    site = 'name = "site-a"\ntrain-file = "data/train.jsonl"\ncpu-threads = 2\nlora-rank = 4\n'
    config = load_site_config(_site(tmp_path, pki_dir, site=site))

    assert config.cpu_threads == 2
    assert parse_config_args([config.to_node_config()])["lora-rank"] == 4.0
    assert config.supernode_environment() == {"OMP_NUM_THREADS": "2"}  # device auto: GPUs kept


def test_superlink_command_always_tls_auth_and_no_dependency_installs(pki_dir):
    argv = deploy.superlink_argv(pki_dir, port=9100)

    assert "--disable-runtime-dependency-installation" in argv
    assert "--enable-supernode-auth" in argv
    for flag, name in (
        ("--ssl-ca-certfile", "ca.pem"),
        ("--ssl-certfile", "server.pem"),
        ("--ssl-keyfile", "server.key"),
    ):
        assert argv[argv.index(flag) + 1] == str(pki_dir / name)
    insecure = deploy.superlink_argv(pki_dir, port=9100, insecure=True)
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure


def test_cli_check_and_connection(tmp_path, pki_dir, capsys, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    site = _site(tmp_path, pki_dir)

    assert fedlora_main(["deploy", "supernode", "--site-config", str(site), "--check"]) == 0
    assert "--node-config" in capsys.readouterr().out
    assert (
        fedlora_main(["deploy", "connection", "fed", "--address", "h:9", "--pki", str(pki_dir)])
        == 0
    )
    text = (tmp_path / "home" / "config.toml").read_text()
    assert '[superlink.fed]\naddress = "h:9"' in text
    assert f'root-certificates = "{pki_dir / "ca.pem"}"' in text
    assert "[superlink.local]" in text


def test_cli_reports_a_bad_site_config_in_one_line(tmp_path, capsys):
    assert fedlora_main(["deploy", "supernode", "--site-config", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedlora: error: site config") and err.count("\n") == 1


def test_heartbeat_interval_goes_to_the_warm_node_and_is_refused_when_cold(tmp_path, pki_dir):
    connection = (
        'superlink = "127.0.0.1:9093"\n'
        f'root-certificates = "{pki_dir / "ca.pem"}"\n'
        f'auth-private-key = "{pki_dir / "sites" / "site-a.key"}"\n'
    )
    config = load_site_config(
        _site(tmp_path, pki_dir, connection=connection + "heartbeat-interval = 10\n")
    )

    warm = deploy.supernode_argv(config, runtime_port=9999)

    assert config.heartbeat_interval == 10.0
    assert warm[warm.index("--heartbeat-interval") + 1] == "10.0"
    assert warm.index("--heartbeat-interval") < warm.index("--")  # fedlora's option, not Flower's
    with pytest.raises(ConfigError, match=r"heartbeat-interval needs fedlora's node"):
        deploy.supernode_argv(config, runtime_port=9999, warm=False)
    with pytest.raises(ConfigError, match=r"\[connection\] heartbeat-interval must be between"):
        load_site_config(
            _site(tmp_path, pki_dir, connection=connection + "heartbeat-interval = 5\n")
        )
