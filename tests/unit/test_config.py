"""Settings: file, overrides and clear errors that name the bad key."""

from pathlib import Path

import pytest

from aggregator.config import ConfigError, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tickbus.toml"
    path.write_text(text)
    return path


def test_defaults_then_file_then_overrides(tmp_path: Path) -> None:
    """Flags and environment override the file; unset flags (None) leave it alone."""
    path = _write(tmp_path, '[amqp]\nqueue = "from-file"\nprefetch = 10\n[http]\nport = 9000\n')
    settings = load_settings(path, {"amqp.queue": "from-flag", "http.port": None})
    assert settings.amqp.queue == "from-flag"
    assert settings.amqp.prefetch == 10
    assert settings.http.port == 9000
    assert settings.amqp.dead_letter_queue_name == "from-flag.dead"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[amqp]\nprefech = 3\n", "unknown field `prefech` - at `amqp`"),
        ("[amqp]\nprefetch = 0\n", "at `amqp.prefetch`"),
        ("[catalog]\nnamespace = 'bad-name'\n", "at `catalog.namespace`"),
        ("[[metrics]]\nname = 'hits'\ntype = 'counter'\nhelp = 'h'\n", "must have a name ending in `_total`"),
        ("[[metrics]]\nname = 'lat'\ntype = 'histogram'\nhelp = 'h'\n", "needs `buckets`"),
        ("[[metrics]]\nname = 'g'\ntype = 'gauge'\nhelp = 'h'\nlabels = ['source']\n", "label 'source' is reserved"),
        (
            "[[metrics]]\nname='g'\ntype='gauge'\nhelp='h'\n[[metrics]]\nname='g'\ntype='gauge'\nhelp='h'\n",
            "declared twice",
        ),
        ("not toml [", "not valid TOML"),
        ("[amqp]\nurl = 'localhost:5672'\n", "url must start with amqp://"),
        ("[[metrics]]\nname='c_total'\ntype='counter'\nhelp='h'\nttl_seconds=0\n", "only gauges expire"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake produces one error that says where it is."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A config path that does not exist says so."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.toml")


def test_a_directory_given_as_config_is_a_clear_error(tmp_path: Path) -> None:
    """--config pointing at a directory says it cannot read it, instead of a traceback."""
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(tmp_path)


def test_a_bad_flag_is_named_without_a_file() -> None:
    """An invalid flag or environment value says where it came from."""
    with pytest.raises(ConfigError, match="flags and environment: url must start with amqp://"):
        load_settings(None, {"amqp.url": "notaurl"})
