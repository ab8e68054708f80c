"""Data-parallel fit over a Mesh: 8 forced host CPU devices train the same trajectory as one device.

XLA's device count is fixed when JAX starts, so the comparison runs in a
fresh interpreter with ``--xla_force_host_platform_device_count=8``.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh
    import purenet as pn
    from purenet import train

    assert len(jax.devices()) == 8, jax.devices()
    data = pn.load_digits()
    model = pn.serial(pn.Dense(64), pn.Tanh(), pn.Dropout(0.1), pn.Dense(10))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 64))
    def run(mesh):
        return pn.fit(
            model, params, data.x_train, data.y_train, loss=pn.softmax_cross_entropy,
            optimizer=optax.adam(1e-3), epochs=3, batch_size=64, key=jax.random.PRNGKey(1),
            validation=(data.x_test, data.y_test), metrics={"accuracy": pn.accuracy}, mesh=mesh,
        )
    mesh = Mesh(np.array(jax.devices()), ("data",))
    single, parallel = run(None), run(mesh)
    leaf = jax.tree_util.tree_leaves(parallel.params)[0]
    # the compiled fused loop of the data-parallel run reduces gradients across devices
    replicated, batch = train._mesh_shardings(mesh, "data", 64)
    step = train._step_function(model, pn.softmax_cross_entropy, optax.adam(1e-3), None, None, "stop")
    state = jax.device_put(pn.TrainState(params, optax.adam(1e-3).init(params), jnp.array(True)), replicated)
    x, y = jax.device_put(data.x_train, replicated), jax.device_put(data.y_train, replicated)
    hlo = train._scan_steps(step, batch).lower(
        state, x, y, jnp.zeros((2, 64), jnp.int32), jax.random.split(jax.random.PRNGKey(0), 2)
    ).compile().as_text()
    print(json.dumps({
        "single": single.history, "parallel": parallel.history,
        "max_param_difference": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
            jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(parallel.params))),
        "param_devices": len(leaf.sharding.device_set),
        "replicated": leaf.sharding.is_fully_replicated,
        "all_reduce": "all-reduce" in hlo,
    }))
    """
)


def run_on_eight_devices(script: str) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_data_parallel_fit_matches_single_device_to_1e_6():
    result = run_on_eight_devices(SCRIPT)
    single, parallel = result["single"], result["parallel"]
    for name in ("loss", "val_loss", "val_accuracy"):
        for a, b in zip(single[name], parallel[name]):
            assert abs(a - b) <= 1e-6 * max(1.0, abs(a)), (name, a, b)
    assert result["max_param_difference"] < 1e-5
    assert result["param_devices"] == 8 and result["replicated"]
    assert result["all_reduce"]


def test_batch_size_must_divide_over_the_mesh():
    script = textwrap.dedent(
        """
        import jax, numpy as np, optax
        from jax.sharding import Mesh
        import purenet as pn
        mesh = Mesh(np.array(jax.devices()), ("data",))
        _, params = pn.Dense(1).init(jax.random.PRNGKey(0), (-1, 2))
        for kwargs, expected in [
            (dict(batch_size=12), "fit: batch_size must be a multiple of the 8 devices on mesh axis 'data', got 12"),
            (dict(batch_size=16, data_axis="batch"), "fit: data_axis 'batch' is not an axis of the mesh"),
        ]:
            try:
                pn.fit(pn.Dense(1), params, np.ones((32, 2)), np.ones((32, 1)), loss=pn.mean_squared_error,
                       optimizer=optax.sgd(0.1), epochs=1, key=jax.random.PRNGKey(0), mesh=mesh, **kwargs)
            except pn.ConfigError as error:
                assert str(error).startswith(expected), str(error)
            else:
                raise AssertionError("no error")
        print("{}")
        """
    )
    assert run_on_eight_devices(script) == {}


WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))
    import numpy as np, optax
    from jax.sharding import Mesh
    import purenet as pn
    data = pn.load_digits()
    model = pn.serial(pn.Dense(32), pn.Tanh(), pn.Dense(10))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 64))
    mesh = Mesh(np.array(jax.devices()), ("data",))  # one CPU device in each of the two processes
    result = pn.fit(model, params, data.x_train, data.y_train, loss=pn.softmax_cross_entropy,
                    optimizer=optax.adam(1e-3), epochs=2, batch_size=64, key=jax.random.PRNGKey(1), mesh=mesh)
    print(json.dumps({"devices": len(jax.devices()), "local": len(jax.local_devices()),
                      "loss": result.history["loss"]}))
    """
)


def test_two_processes_on_localhost_with_cpu_collectives(key):
    """jax.distributed over two local processes (Gloo collectives) trains what one device trains."""
    import socket

    import jax
    import optax

    import purenet as pn

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(rank), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in range(2)
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    data = pn.load_digits()
    model = pn.serial(pn.Dense(32), pn.Tanh(), pn.Dense(10))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 64))
    single = pn.fit(
        model, params, data.x_train, data.y_train, loss=pn.softmax_cross_entropy,
        optimizer=optax.adam(1e-3), epochs=2, batch_size=64, key=jax.random.PRNGKey(1),
    ).history["loss"]  # fmt: skip
    for result in results:
        assert result["devices"] == 2 and result["local"] == 1
        for a, b in zip(single, result["loss"]):
            assert abs(a - b) <= 1e-6 * abs(a), (single, result["loss"])
