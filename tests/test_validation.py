"""Invalid configuration files get one readable line per problem: where, what, and the value given."""

import pytest

from neural_router.pool import ModelPool


def test_pool_errors_name_the_model_the_field_and_the_value(tmp_path):
    f = tmp_path / "pool.yaml"
    f.write_text("models:\n  - name: a\n    input_price_per_1m: -1\n    output_price_per_1m: x\n  - name: b\n")
    with pytest.raises(ValueError) as e:
        ModelPool.from_yaml(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: invalid model pool")
    assert "models[0] 'a'.input_price_per_1m: Input should be greater than or equal to 0 (got -1)" in msg
    assert "models[0] 'a'.output_price_per_1m:" in msg and "(got 'x')" in msg
    assert "models[1] 'b'.input_price_per_1m: missing (required)" in msg
    # no developer noise: no documentation links, no complaint about the list when its items failed
    assert "errors.pydantic.dev" not in msg and "at least 1 item" not in msg


def test_training_config_errors_list_every_bad_key(tmp_path):
    from neural_router.training.config import load_train_config

    f = tmp_path / "train.yaml"
    f.write_text("epochs: -3\ndata:\n  val_fraction: 2\nbogus: 1\n")
    with pytest.raises(ValueError) as e:
        load_train_config(f)
    lines = str(e.value).splitlines()[1:]
    assert [ln.split(":")[0].strip() for ln in lines] == ["epochs", "data.val_fraction", "bogus"]
    assert "(got -3)" in lines[0] and "(got 2)" in lines[1]


def test_serving_config_errors_are_readable_and_never_show_secrets(tmp_path):
    from pydantic import BaseModel, ValidationError

    from neural_router.validation import describe
    from neural_router.serving.config import ConfigError, load_settings

    f = tmp_path / "serve.yaml"
    f.write_text("port: 99999999\nfoo: 1\n")
    with pytest.raises(ConfigError) as e:
        load_settings(f)
    msg = str(e.value)
    assert "port: Input should be less than or equal to 65535 (got 99999999)" in msg and "foo:" in msg

    class WithKey(BaseModel):
        admin_key: int

    with pytest.raises(ValidationError) as v:
        WithKey(admin_key="hunter2")
    assert "hunter2" not in describe(v.value, {"admin_key": "hunter2"})
