"""Issue 18: KeepCheckpoints keeps the last N epochs and the best one, and never replaces silently."""

import os

import numpy as np
import optax
import pytest
from test_fit_control import MODEL, PARAMS, X_VAL, Y_VAL, Recorder, leaves_equal, run

import purenet as pn
from purenet import checkpoint


def template():
    return {"params": PARAMS, "opt_state": optax.adam(1e-2).init(PARAMS)}


def names(directory):
    return sorted(os.listdir(directory))


def test_it_keeps_the_last_n_epochs(tmp_path):
    keep, recorder = pn.KeepCheckpoints(tmp_path, last=2), Recorder()
    run(epochs=5, callbacks=[recorder, keep])
    assert names(tmp_path) == ["epoch-0004.npz", "epoch-0005.npz"]
    assert [path.name for path in keep.paths] == ["epoch-0004.npz", "epoch-0005.npz"]
    for epoch in (4, 5):
        tree, meta = checkpoint.load(tmp_path / f"epoch-{epoch:04d}.npz", like=template())
        assert meta["epoch"] == epoch and len(meta["history"]["loss"]) == epoch
        assert leaves_equal(tree["params"], recorder.params[epoch - 1])


def test_it_keeps_the_best_epoch_by_a_metric(tmp_path):
    keep, recorder = pn.KeepCheckpoints(tmp_path, last=None, best="val_loss"), Recorder()
    _, _, history = run(epochs=8, optimizer=optax.sgd(3.0), callbacks=[recorder, keep])
    best = int(np.nanargmin(history["val_loss"])) + 1
    assert names(tmp_path) == ["best.npz"] and keep.best_epoch == best
    tree, meta = checkpoint.load(keep.best_path, like=template() | {"opt_state": optax.sgd(3.0).init(PARAMS)})
    assert meta["epoch"] == best and meta["monitor"] == "val_loss"
    assert meta["value"] == history["val_loss"][best - 1]
    assert leaves_equal(tree["params"], recorder.params[best - 1])
    loss = pn.evaluate(MODEL, tree["params"], X_VAL, Y_VAL, loss=pn.softmax_cross_entropy)["loss"]
    np.testing.assert_allclose(loss, meta["value"], rtol=1e-5)  # the file holds what the metric measured


def test_an_earlier_runs_checkpoints_are_announced_and_replaced_after_the_first_save(tmp_path, capsys):
    run(epochs=4, callbacks=[pn.KeepCheckpoints(tmp_path, last=3, best="val_loss")])
    capsys.readouterr()

    seen = []

    def look(epoch, history, state):  # runs before KeepCheckpoints' save of this epoch
        seen.append(names(tmp_path))

    keep = pn.KeepCheckpoints(tmp_path, last=1, best="val_loss")
    run(epochs=2, callbacks=[look, keep])
    err = capsys.readouterr().err
    assert "replaces 4 checkpoint(s) an earlier run left there" in err
    assert "epoch-0002.npz, epoch-0003.npz, epoch-0004.npz, best.npz" in err
    assert seen[0] == ["best.npz", "epoch-0002.npz", "epoch-0003.npz", "epoch-0004.npz"]  # kept until then
    assert names(tmp_path) == ["best.npz", "epoch-0002.npz"]
    assert checkpoint.read_metadata(tmp_path / "best.npz")["epoch"] in (1, 2)


def test_a_resumed_run_keeps_its_own_files_and_best(tmp_path, capsys):
    ckpt, kept = tmp_path / "run", tmp_path / "kept"
    run(epochs=3, checkpoint_path=ckpt, callbacks=[pn.KeepCheckpoints(kept, last=5, best="val_accuracy")])
    first_best = checkpoint.read_metadata(kept / "best.npz")
    capsys.readouterr()
    keep = pn.KeepCheckpoints(kept, last=5, best="val_accuracy")
    _, _, history = run(epochs=5, checkpoint_path=ckpt, callbacks=[keep])
    assert "replaces" not in capsys.readouterr().err
    assert names(kept) == ["best.npz"] + [f"epoch-{e:04d}.npz" for e in range(1, 6)]
    best = int(np.argmax(history["val_accuracy"])) + 1  # first of ties, as the run saw them
    assert keep.best_epoch == best
    assert checkpoint.read_metadata(kept / "best.npz")["epoch"] == (best if best > 3 else first_best["epoch"])


def test_an_unwritable_directory_is_refused_before_training(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a directory cannot be made under a file, whoever runs the test
    recorder = Recorder()
    with pytest.raises(pn.CheckpointError, match=r"KeepCheckpoints: cannot create '.*file/sub'"):
        run(epochs=2, callbacks=[recorder, pn.KeepCheckpoints(blocked / "sub")])
    assert recorder.epochs == []


def test_a_directory_that_is_a_file_is_refused(tmp_path):
    plain = tmp_path / "file"
    plain.write_text("")
    with pytest.raises(pn.CheckpointError, match="KeepCheckpoints: cannot create"):
        run(epochs=1, callbacks=[pn.KeepCheckpoints(plain)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"last": None}, "keeps nothing: pass last=N, best='val_loss' (say), or both"),
        ({"last": 0}, "last must be an integer >= 1"),
        ({"best": "val_lost"}, "monitor 'val_lost' is not in fit's history"),
        ({"best": "val_loss", "mode": "up"}, "mode must be one of"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(pn.ConfigError, match="KeepCheckpoints") as error:
        run(epochs=1, callbacks=[pn.KeepCheckpoints(tmp_path, **kwargs)])
    assert message in str(error.value)
    assert names(tmp_path) == []


def test_a_directory_of_the_wrong_type_is_refused():
    with pytest.raises(pn.ConfigError, match="KeepCheckpoints: directory must be a path, got int"):
        pn.KeepCheckpoints(3)
