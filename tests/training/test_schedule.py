"""Tests of alexnet_tf.schedule.PlateauSchedule on scripted validation curves."""

import json
import sys

import keras
import numpy as np
import pytest

from alexnet_tf import errors
from alexnet_tf.training import distribute, schedule

# A curve scripted so that, with patience 2 and min_delta 0.005, the learning rate is divided by 10 at the
# end of (0-based) epochs 3, 6 and 9, and never again (the cap of 3 reductions is reached).
CURVE = [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.69, 0.688, 0.687, 0.687, 0.687, 0.687, 0.687]
# The learning rate used during each epoch of CURVE.
EXPECTED_LR = [0.01] * 4 + [0.001] * 3 + [0.0001] * 3 + [1e-05] * 4
PATIENCE = 2
MIN_DELTA = 0.005


def _model(learning_rate=0.01):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9), loss="mse")
    return model


def _callback(**kwargs):
    return schedule.PlateauSchedule(patience_epochs=PATIENCE, min_delta=MIN_DELTA, **kwargs)


def _drive(callback, model, curve, first_epoch=0):
    """Feeds `curve[first_epoch:]` to the callback's hooks as Keras would; returns the logged rates."""
    callback.set_model(model)
    callback.on_train_begin()
    rates = []
    for epoch in range(first_epoch, len(curve)):
        callback.on_epoch_begin(epoch)
        logs = {"val_top1_error": curve[epoch], "loss": 1.0}
        callback.on_epoch_end(epoch, logs)
        rates.append(logs["learning_rate"])
    return rates


def _optimizer_lr(model):
    return np.float32(model.optimizer.learning_rate.numpy())


def test_reductions_at_expected_epochs_with_exact_rates():
    model = _model()
    callback = _callback()
    rates = _drive(callback, model, CURVE)
    assert rates == EXPECTED_LR
    assert _optimizer_lr(model) == np.float32(1e-5)
    assert callback.get_state() == {
        "epoch": 13, "best": 0.69, "wait": 4, "reductions": 3, "learning_rate": 1e-05,
    }


def test_flat_curve_reduces_every_patience_epochs_at_most_max_reductions():
    model = _model(0.05)
    callback = schedule.PlateauSchedule(monitor="val_err", factor=0.5, patience_epochs=1, max_reductions=2)
    callback.set_model(model)
    callback.on_train_begin()
    rates = []
    for epoch in range(5):
        callback.on_epoch_begin(epoch)
        logs = {"val_err": 0.5}
        callback.on_epoch_end(epoch, logs)
        rates.append(logs["learning_rate"])
    assert rates == [0.05, 0.05, 0.025, 0.0125, 0.0125]
    assert callback.get_state()["reductions"] == 2


def test_nan_is_not_an_improvement():
    model = _model()
    callback = schedule.PlateauSchedule(patience_epochs=2)
    rates = _drive(callback, model, [0.5, float("nan"), float("nan"), 0.4])
    assert rates == [0.01, 0.01, 0.01, 0.001]
    assert callback.get_state()["best"] == 0.4


def test_missing_monitor_leaves_the_rate_unchanged():
    model = _model()
    callback = schedule.PlateauSchedule(monitor="val_top5_error", patience_epochs=1)
    rates = _drive(callback, model, [0.5, 0.5, 0.5])
    assert rates == [0.01] * 3
    assert callback.get_state()["wait"] == 0
    assert _optimizer_lr(model) == np.float32(0.01)


def test_state_round_trip_through_json_continues_identically():
    model = _model()
    first = _callback()
    _drive(first, model, CURVE[:6])
    saved = json.loads(json.dumps(first.get_state()))
    assert saved == {"epoch": 5, "best": 0.7, "wait": 1, "reductions": 1, "learning_rate": 0.001}

    fresh_model = _model()  # Its optimizer starts again at 0.01: set_state must restore 0.001.
    second = _callback()
    second.set_model(fresh_model)
    second.set_state(saved)
    assert _optimizer_lr(fresh_model) == np.float32(0.001)
    rates = _drive(second, fresh_model, CURVE, first_epoch=6)
    assert rates == EXPECTED_LR[6:]


def test_state_file_holds_every_epoch(tmp_path):
    path = str(tmp_path / "sub" / "plateau.json")
    _drive(_callback(state_path=path), _model(), CURVE)
    with open(path) as f:
        content = json.load(f)
    assert content["monitor"] == "val_top1_error"
    assert sorted(int(e) for e in content["states"]) == list(range(len(CURVE)))
    assert [s["learning_rate"] for _, s in sorted(content["states"].items(), key=lambda i: int(i[0]))] == [
        *EXPECTED_LR[1:], 1e-05,
    ]
    assert not (tmp_path / "sub" / ".partial-plateau.json").exists()


@pytest.mark.parametrize("resume_epoch", [3, 4, 7, 10])
def test_restart_restores_the_state_of_the_previous_epoch(tmp_path, resume_epoch):
    """A run killed after writing epoch `resume_epoch` resumes from the backup of `resume_epoch - 1`."""
    path = str(tmp_path / "plateau.json")
    # The first process finishes epoch `resume_epoch` (the file has it) and dies before backing it up.
    _drive(_callback(state_path=path), _model(), CURVE[: resume_epoch + 1])
    # The second process: fresh model and callback; BackupAndRestore makes fit() start at resume_epoch.
    model = _model()
    rates = _drive(_callback(state_path=path), model, CURVE, first_epoch=resume_epoch)
    assert rates == EXPECTED_LR[resume_epoch:]
    assert _optimizer_lr(model) == np.float32(1e-5)


def test_only_the_chief_writes_but_every_worker_restores(tmp_path):
    path = str(tmp_path / "plateau.json")
    _drive(_callback(state_path=path, is_chief=False), _model(), CURVE[:5])
    assert not (tmp_path / "plateau.json").exists()

    _drive(_callback(state_path=path, is_chief=True), _model(), CURVE[:5])
    worker_model = _model()
    rates = _drive(_callback(state_path=path, is_chief=False), worker_model, CURVE, first_epoch=5)
    assert rates == EXPECTED_LR[5:]
    with open(path) as f:
        assert sorted(json.load(f)["states"], key=int)[-1] == "4"  # The worker did not write.


def test_resume_without_the_needed_epoch_is_refused(tmp_path):
    path = str(tmp_path / "plateau.json")
    _drive(_callback(state_path=path), _model(), CURVE[:3])  # Epochs 0..2 saved.
    callback = _callback(state_path=path)
    with pytest.raises(errors.TrainingError, match="no state for epoch 6"):
        _drive(callback, _model(), CURVE, first_epoch=6)


def test_resume_without_a_file_starts_afresh_from_the_optimizer_rate(tmp_path):
    model = _model(0.002)
    rates = _drive(_callback(state_path=str(tmp_path / "none.json")), model, [0.5] * 7, first_epoch=3)
    assert rates == [0.002, 0.002, 0.002, 0.0002]


class _ScriptedValidation(keras.callbacks.Callback):
    """Puts CURVE[epoch] in the logs, as Keras' evaluation would put the validation error."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_top1_error"] = CURVE[epoch]


class _Kill(keras.callbacks.Callback):
    """Raises at the end of `epoch`, after the callbacks before it and before those after it."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated SIGKILL")


def _fit(tmp_path, callbacks_between=()):
    """Trains a fresh model under BackupAndRestore; returns the learning rates History recorded."""
    model = _model()
    callbacks = [
        _ScriptedValidation(),
        _callback(state_path=str(tmp_path / "plateau.json")),
        *callbacks_between,
        keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
    ]
    x = np.ones((4, 2), np.float32)
    history = model.fit(x, x[:, :1], batch_size=4, epochs=len(CURVE), callbacks=callbacks, verbose=0)
    return history.history["learning_rate"]


def test_kill_between_the_schedule_write_and_the_backup_write_under_fit(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, [_Kill(epoch=6)])  # Epoch 6 is in plateau.json, the backup holds epoch 5.
    with open(tmp_path / "plateau.json") as f:
        assert "6" in json.load(f)["states"]
    resumed_rates = _fit(tmp_path)
    assert resumed_rates == EXPECTED_LR[6:]


def test_every_replica_gets_the_reduced_rate_under_mirrored_strategy():
    # tests/conftest.py splits the CPU into two logical devices.
    strategy = distribute.make_strategy("mirrored")
    with strategy.scope():
        model = _model()
    x = np.ones((8, 2), np.float32)
    callbacks = [_ScriptedValidation(), _callback()]
    history = model.fit(x, x[:, :1], batch_size=4, epochs=5, callbacks=callbacks, verbose=0)
    assert history.history["learning_rate"] == EXPECTED_LR[:5]  # Reduced at the end of epoch 3.
    replicas = strategy.experimental_local_results(model.optimizer.learning_rate.value)
    assert [np.float32(r.numpy()) for r in replicas] == [np.float32(1e-3)] * 2


def test_learning_rate_schedule_is_refused():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    decay = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.9)
    model.compile(optimizer=keras.optimizers.SGD(decay), loss="mse")
    with pytest.raises(errors.ConfigError, match="float learning rate"):
        _drive(schedule.PlateauSchedule(), model, [0.5])


@pytest.mark.parametrize("kwargs, message", [
    ({"factor": 1.0}, r"factor must be in \(0, 1\), got 1.0"),
    ({"factor": 0.0}, r"factor must be in \(0, 1\), got 0.0"),
    ({"patience_epochs": 0}, "patience must be a whole number of epochs >= 1, got 0"),
    ({"min_delta": -1}, "min_delta must be >= 0, got -1"),
    ({"min_delta": float("nan")}, "min_delta must be >= 0, got nan"),
    ({"max_reductions": -1}, "reductions must be >= 0, got -1"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(errors.ConfigError, match=message):
        schedule.PlateauSchedule(**kwargs)


def test_a_schedule_config_builds_its_schedule():
    built = schedule.ScheduleConfig(patience_epochs=4, min_delta=0.005, max_reductions=2).build(
        state_path="ram://schedule_config/plateau.json", is_chief=False)
    assert (built.patience_epochs, built.min_delta, built.max_reductions) == (4, 0.005, 2)
    assert (built.state_path, built.is_chief, built.factor) == ("ram://schedule_config/plateau.json", False, 0.1)
    with pytest.raises(errors.ConfigError, match="patience"):
        schedule.ScheduleConfig(patience_epochs=0)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
