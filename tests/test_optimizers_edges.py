"""Optimizer and checkpoint edge cases found by fuzzing against torch.optim: a Variable given
twice, non-real gradients, duplicate state names, clipping integer or non-finite gradients,
UpdateRule's argument checks, NumPy warnings from the fused update programs, a missing
checkpoint folder, and resuming a seeded Dropout through a pickled generator."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest

import gradtape as gt
from gradtape.optimizers import UpdateRule


def test_a_variable_given_twice_in_one_call_raises_and_changes_nothing():
    v = gt.Variable([1.0, 2.0], name="w")
    opt = gt.optimizers.Adam(0.1)
    with pytest.raises(ValueError, match=r"variable w is given twice \(pairs #0 and #1\); add its "
                                         r"gradients"):
        opt.apply_gradients([(gt.tensor([1.0, 1.0]), v), (gt.tensor([3.0, 3.0]), v)])
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
    assert opt.iterations == 0 and not [k for k in opt.state_dict() if "/" in k]


@pytest.mark.parametrize("grad", [np.array([1 + 4j, 1 - 4j], np.complex64), np.array(["a", "b"])],
                         ids=["complex", "str"])
def test_a_gradient_that_is_not_real_raises(grad):
    with gt.use_backend("numpy"):  # (host arrays as gradients: the NumPy backend's)
        v = gt.Variable([1.0, 1.0], name="w")
        with pytest.raises(TypeError, match=rf"the gradient for variable w has dtype {grad.dtype}; "
                                            r"a real-valued gradient"):
            gt.optimizers.SGD(0.5).apply_gradients([(grad, v)])
        np.testing.assert_array_equal(v.numpy(), [1.0, 1.0])


def test_integer_gradients_are_still_cast():
    v = gt.Variable([1.0, 1.0])
    gt.optimizers.SGD(0.5).apply_gradients([(gt.tensor([2, 4]), v)])
    np.testing.assert_array_equal(v.numpy(), [0.0, -1.0])


def test_a_state_name_given_twice_raises():
    a, b = gt.Variable([1.0]), gt.Variable([2.0])
    opt = gt.optimizers.Adam(0.1)
    opt.apply_gradients([(gt.tensor([1.0]), a), (gt.tensor([3.0]), b)])
    with pytest.raises(ValueError, match=r"state_dict: the name 'x' is given twice .*#0 and #1"):
        opt.state_dict([("x", a), ("x", b)])
    sd = opt.state_dict([("x", a), ("y", b)])
    with pytest.raises(ValueError, match=r"load_state_dict: the name 'x' is given twice"):
        opt.load_state_dict(sd, [("x", a), ("x", b)])


def test_clip_by_global_norm_refuses_integer_gradients():
    with pytest.raises(TypeError, match=r"grads\[1\] must be a floating-point .* got dtype int64"):
        gt.optimizers.clip_by_global_norm([None, gt.tensor(np.array([3, 4]))], 1.0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning:gradtape")  # (pytest resets the filter)
def test_a_non_finite_global_norm_makes_every_entry_nan_as_in_tf():
    grads = [gt.tensor([np.inf, 1.0]), None, gt.tensor([1.0, 2.0])]
    clipped, norm = gt.optimizers.clip_by_global_norm(grads, 1.0)
    assert norm == np.inf and clipped[1] is None
    assert np.isnan(clipped[0].numpy()).all() and np.isnan(clipped[2].numpy()).all()

    @gt.function
    def clip(a, b):
        out, n = gt.optimizers.clip_by_global_norm([a, b], 1.0)
        return out[0], out[1], n

    finite = (gt.tensor([3.0, 0.0]), gt.tensor([0.0, 4.0]))
    for args in [finite, finite, (gt.tensor([np.inf, 1.0]), gt.tensor([1.0, 2.0])), finite]:
        ca, cb, n = clip(*args)
        eager, en = gt.optimizers.clip_by_global_norm(list(args), 1.0)
        np.testing.assert_array_equal(ca.numpy(), eager[0].numpy())
        np.testing.assert_array_equal(cb.numpy(), eager[1].numpy())
        assert float(n) == en
    # an optimizer's global_clipnorm: an overflowing gradient shows in every variable
    v, u = gt.Variable([1.0, 2.0]), gt.Variable([1.0])
    gt.optimizers.SGD(0.1, global_clipnorm=1.0).apply_gradients(
        [(gt.tensor([1.0, 2.0]), v), (gt.tensor([np.inf]), u)])
    assert np.isnan(v.numpy()).all() and np.isnan(u.numpy()).all()


def test_update_rule_apply_checks_its_arguments():
    rule = UpdateRule("sgd", ("p", "g"), ("lr",), (("p", "p - lr * g"),), ("p",))
    with pytest.raises(TypeError, match=r"'sgd'.apply: the outputs \['p'\] must be floating .* "
                                        r"dtype int64"):
        rule.apply([np.full(3, 10), np.full(3, 4)], [0.25])
    with pytest.raises(TypeError, match=r"expected 2 arrays \['p', 'g'\] and 1 scalars \['lr'\], "
                                        r"got 2 and 0"):
        rule.apply([np.ones(3), np.ones(3)], [])
    with pytest.raises(TypeError, match=r"got 1 and 1"):
        rule.apply([np.ones(3)], [0.1])
    with pytest.raises(ValueError, match=r"array 'g' of shape \(4,\) does not broadcast to the "
                                         r"outputs' shape \(3,\)"):
        rule.apply([np.ones(3), np.ones(4)], [0.1])
    with pytest.raises(TypeError, match=r"array 'g' must hold real numbers, got dtype complex128"):
        rule.apply([np.ones(3), np.ones(3, complex)], [0.1])
    p = np.ones(3)
    rule.apply([p, np.float64(2.0)], [0.25])  # a 0-d gradient broadcasts
    np.testing.assert_array_equal(p, [0.5, 0.5, 0.5])


def test_sgd_nesterov_must_be_a_bool():
    with pytest.raises(TypeError, match=r"SGD: nesterov must be True or False, got 'False'"):
        gt.optimizers.SGD(0.1, momentum=0.9, nesterov="False")
    assert gt.optimizers.SGD(0.1, momentum=0.9, nesterov=np.bool_(True)).nesterov is True


def test_fused_update_programs_keep_numpy_warnings_quiet():
    """The update (and fused backward) programs are gradtape's code: NumPy's RuntimeWarnings
    from them fall under the warnings filter for gradtape's modules."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"gradtape(\.|\Z)")
        v = gt.Variable(np.full(2, 3e38, np.float32))
        gt.optimizers.SGD(1.0).apply_gradients([(gt.tensor(np.full(2, -3e38, np.float32)), v)])
        x = gt.Variable(np.full(2, 3e38, np.float32))
        with gt.GradientTape() as tape:
            y = gt.sum(gt.tanh(x) * x * x)
        tape.gradient(y, x)
    assert np.isinf(v.numpy()).all()
    assert [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)] == []


def test_save_into_a_missing_folder_names_the_folder(tmp_path):
    target = tmp_path / "no_such_dir" / "ckpt.npz"
    with pytest.raises(FileNotFoundError, match=r"save: the folder of .*no_such_dir/ckpt.npz' "
                                                r"does not exist"):
        gt.nn.save(target, gt.nn.Dense(2, 2, seed=0))
    assert not (tmp_path / "no_such_dir").exists()


def test_a_dropout_stream_resumes_through_a_pickled_generator(tmp_path):
    """The documented way to resume a seeded Dropout exactly: its generator, pickled with the
    checkpoint (a checkpoint holds no generator state)."""
    rng = np.random.default_rng(0)
    X = gt.tensor(rng.standard_normal((8, 4)).astype(np.float32))
    Y = gt.tensor(rng.standard_normal((8, 2)).astype(np.float32))

    def model(gen):
        return gt.nn.Sequential([gt.nn.Dense(4, 16, seed=1), gt.nn.Dropout(0.5, seed=gen),
                                 gt.nn.Dense(16, 2, seed=2)])

    def step(m, o):
        with gt.GradientTape() as t:
            loss = gt.nn.mse(m(X), Y)
        o.apply_gradients(zip(t.gradient(loss, m.trainable_variables), m.trainable_variables))

    a, oa = model(gt.random.Generator(5)), gt.optimizers.Adam(0.01)
    for _ in range(6):
        step(a, oa)
    gen = gt.random.Generator(5)
    b, ob = model(gen), gt.optimizers.Adam(0.01)
    for _ in range(3):
        step(b, ob)
    path = gt.nn.save(tmp_path / "ck", b, ob)
    (tmp_path / "gen.pkl").write_bytes(pickle.dumps(gen))
    c, oc = model(pickle.loads((tmp_path / "gen.pkl").read_bytes())), gt.optimizers.Adam(0.01)
    gt.nn.load(path, c, oc)
    for _ in range(3):
        step(c, oc)
    for x, y in zip(a.variables, c.variables):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert os.path.exists(path)


def test_a_model_given_as_the_learning_rate_is_refused_at_once():
    # Adam(model) (PyTorch's habit) passed for a callable schedule and failed at the first
    # step with the model's own shape error
    m = gt.nn.Dense(2, 2)
    for bad in (m, m.kernel):
        with pytest.raises(TypeError, match="first argument is learning_rate"):
            gt.optimizers.Adam(bad)


def _sgd_run(change_at, change, compiled):
    w = gt.Variable(np.zeros(2))
    opt = gt.optimizers.SGD(0.1)

    def step(x):
        with gt.GradientTape() as tape:
            loss = gt.sum(w * x)
        opt.apply_gradients([(tape.gradient(loss, w), w)])

    f = gt.function(step) if compiled else step
    for i in range(6):
        if i == change_at:
            change(opt)
        f(gt.tensor([1.0 + i, 2.0 - i]))
    return w.numpy()


def _sgd_reference(momentum_at_step):
    """PyTorch's SGD, a momentum buffer started (as ``g``) at the first step that uses one."""
    w, buf = np.zeros(2), None
    for i in range(6):
        g = np.array([1.0 + i, 2.0 - i])
        m = momentum_at_step(i)
        if m:
            buf = g.copy() if buf is None else m * buf + g
            g = buf
        w = w - 0.1 * g
    return w


@pytest.mark.parametrize("compiled", [False, True])
def test_momentum_set_after_the_first_step_takes_effect(compiled):
    # setting SGD's momentum from 0 after steps raised IndexError inside the fused program;
    # from a nonzero value to 0, TypeError: the update now reads the slots the rule needs
    got = _sgd_run(2, lambda o: setattr(o, "momentum", 0.9), compiled)
    np.testing.assert_allclose(got, _sgd_reference(lambda i: 0.9 if i >= 2 else 0.0), rtol=1e-12)
    got = _sgd_run(4, lambda o: setattr(o, "momentum", 0.5), compiled)
    np.testing.assert_allclose(got, _sgd_reference(lambda i: 0.5 if i >= 4 else 0.0), rtol=1e-12)


def test_momentum_set_to_zero_after_steps_stops_using_the_buffer():
    w = gt.Variable(np.zeros(2))
    opt = gt.optimizers.SGD(0.1, momentum=0.5)
    for i in range(4):
        if i == 2:
            opt.momentum = 0.0
        opt.apply_gradients([(gt.tensor([1.0 + i, 2.0 - i]), w)])
    ref, buf = np.zeros(2), None
    for i in range(4):
        g = np.array([1.0 + i, 2.0 - i])
        if i < 2:
            buf = g.copy() if buf is None else 0.5 * buf + g
            g = buf
        ref = ref - 0.1 * g
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("name, value, error", [
    ("learning_rate", "0.1", TypeError), ("learning_rate", -1.0, ValueError),
    ("learning_rate", float("nan"), ValueError), ("momentum", 1.5, ValueError),
    ("nesterov", "False", TypeError), ("weight_decay", -0.1, ValueError),
    ("global_clipnorm", 0.0, ValueError)])
def test_hyper_parameters_set_after_construction_are_checked(name, value, error):
    opt = gt.optimizers.SGD(0.1, momentum=0.9)
    with pytest.raises(error, match=f"SGD: {name} must be"):
        setattr(opt, name, value)
    assert getattr(opt, name) == {"learning_rate": 0.1, "momentum": 0.9, "nesterov": False,
                                  "weight_decay": 0.0, "global_clipnorm": None}[name]


@pytest.mark.parametrize("name, value", [("beta1", 1.0), ("beta2", -0.5), ("epsilon", -1e-8),
                                         ("weight_decay", float("inf"))])
def test_adam_hyper_parameters_set_after_construction_are_checked(name, value):
    opt = gt.optimizers.AdamW()
    with pytest.raises(ValueError, match=f"AdamW: {name} must be"):
        setattr(opt, name, value)


def test_a_learning_rate_set_after_construction_is_used():
    w = gt.Variable([1.0])
    opt = gt.optimizers.SGD(0.1)
    opt.learning_rate = np.float32(0.5)
    opt.apply_gradients([(gt.tensor([1.0]), w)])
    opt.learning_rate = lambda step: 0.25
    opt.apply_gradients([(gt.tensor([1.0]), w)])
    np.testing.assert_allclose(w.numpy(), [0.25])


@pytest.mark.parametrize("make, name, hint", [
    (lambda: gt.optimizers.SGD(0.1), "lr", "set learning_rate"),
    (lambda: gt.optimizers.Adam(0.1), "eps", "set epsilon"),
    (lambda: gt.optimizers.AdamW(0.1), "beta_1", "set beta1"),
    (lambda: gt.optimizers.SGD(0.1), "eps", "SGD has no epsilon"),
])
def test_a_peer_frameworks_hyper_parameter_name_is_refused_not_ignored(make, name, hint):
    # opt.lr = 0.5 (PyTorch's and old Keras's name) made a new attribute no step read
    opt = make()
    with pytest.raises(AttributeError, match=f"{name!r} is not one of its hyper-parameters "
                                             rf"\({hint}; they are learning_rate"):
        setattr(opt, name, 0.5)


def test_malformed_gradient_pairs_get_the_pairs_message():
    w = gt.Variable([1.0, 2.0])
    opt = gt.optimizers.SGD(0.1)
    with pytest.raises(TypeError, match=r"SGD.apply_gradients: expected \(gradient, Variable\) "
                                        r"pairs, got a tuple of 3 items as entry #0"):
        opt.apply_gradients([(gt.ones(2), w, 1)])
    for bad, name in (("ab", "str"), (None, "NoneType"), (gt.ones(2), "Tensor")):
        with pytest.raises(TypeError, match=f"pairs, e.g. zip\\(grads, variables\\), got {name}"):
            opt.apply_gradients(bad)
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    with pytest.raises(NotImplementedError, match="Optimizer defines no update rule"):
        gt.optimizers.Optimizer(0.1).apply_gradients([(gt.ones(2), w)])


def test_threads_sharing_an_optimizer_count_every_step():
    # self.iterations += 1 is no atomic operation: 4 threads x 500 steps counted ~1900
    import sys
    import threading
    opt = gt.optimizers.Adam(0.01)
    vs = [gt.Variable(np.ones(4, np.float32)) for _ in range(4)]

    def work(v):
        for _ in range(500):
            opt.apply_gradients([(gt.ones((4,)), v)])

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as a busy program would
    try:
        ts = [threading.Thread(target=work, args=(v,)) for v in vs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert opt.iterations == 2000


@pytest.mark.parametrize("big, shown", [(np.array([1e6]), r"float64 gradient .* values up to 1e\+06"),
                                        (np.array([100000]), r"int64 gradient .* values up to 100000")])
def test_a_wide_gradient_past_a_narrow_variables_range_is_refused(big, shown):
    # a float64 gradient of 1e6 for a float16 Variable was cast to inf before lr = 1e-6 scaled
    # it: the Variable became -inf (an integer one of 100000 too, unchecked)
    v = gt.Variable(np.array([1.0], np.float16))
    with pytest.raises(ValueError, match=rf"the {shown}, past float16's range"):
        gt.optimizers.SGD(1e-6).apply_gradients([(gt.tensor(big), v)])
    assert v.numpy().tolist() == [1.0]
    gt.optimizers.SGD(0.5).apply_gradients([(gt.tensor(big // big), v)])  # fits: cast
    assert v.numpy().tolist() == [0.5]


def test_a_compiled_step_checks_a_wide_gradient_at_each_call():
    # the check ran eagerly only: a replay of the traced step cast 1e6 to inf and the float16
    # Variable became -inf, where the eager step raised
    v = gt.Variable(np.array([1.0], np.float16))
    opt = gt.optimizers.SGD(1e-6)

    @gt.function
    def step(g):
        opt.apply_gradients([(g, v)])

    for g in (1.0, 2.0, 3.0):  # traced twice (the checking trace), then replayed
        step(gt.tensor(np.array([g])))
    assert step.trace_count == 2
    before = v.numpy().copy()
    with pytest.raises(ValueError, match=r"the float64 gradient for float16 variable #0 holds "
                                         r"values up to 1e\+06, past float16's range"):
        step(gt.tensor(np.array([1e6])))
    assert v.numpy().tolist() == before.tolist()
    step(gt.tensor(np.array([1.0])))  # a value in range still trains, replayed
    assert step.trace_count == 2
    assert np.isfinite(v.numpy()).all()


@pytest.mark.parametrize("kwargs, ours", [
    ({"lr": 1e-3}, "learning_rate="), ({"betas": (0.9, 0.99)}, "beta1=..., beta2="),
    ({"eps": 1e-6}, "epsilon="), ({"beta_1": 0.9}, "beta1="), ({"clipnorm": 1.0}, "global_clipnorm="),
    ({"amsgrad": True}, "it takes learning_rate, beta1, beta2, epsilon")])
def test_pytorch_and_keras_constructor_arguments_name_ours(kwargs, ours):
    with pytest.raises(TypeError, match="Adam: unknown argument") as e:
        gt.optimizers.Adam(**kwargs)
    assert ours in str(e.value)


@pytest.mark.parametrize("first", ["list", "tuple", "generator", "dict"])
def test_the_variables_as_first_argument_are_refused_without_listing_them(first):
    model = gt.nn.Dense(3, 2)
    vs = model.trainable_variables
    arg = {"list": list(vs), "tuple": tuple(vs), "generator": (v for v in vs),
           "dict": {"params": list(vs)}}[first]
    with pytest.raises(TypeError, match="the first argument is learning_rate") as e:
        gt.optimizers.Adam(arg)
    assert "Variable(" not in str(e.value) and "Adam(1e-3) here" in str(e.value)


@pytest.mark.parametrize("opt", [gt.optimizers.SGD(0.1, momentum=0.5), gt.optimizers.Adam(),
                                 gt.optimizers.AdamW(2e-3, epsilon=1e-6)])
def test_an_optimizers_repr_is_its_constructor_call(opt):
    """The repr showed eps= and decoupled=, which the constructor refuses."""
    again = eval(repr(opt), {"SGD": gt.optimizers.SGD, "Adam": gt.optimizers.Adam,
                             "AdamW": gt.optimizers.AdamW})
    assert type(again) is type(opt) and repr(again) == repr(opt)
    assert "eps=" not in repr(opt) and "decoupled" not in repr(opt)


def test_a_subclass_passing_keywords_on_shows_the_hyper_parameters_and_names_itself():
    class Warm(gt.optimizers.Adam):
        def __init__(self, warmup=100, **kw):
            super().__init__(**kw)
            self.warmup = warmup

    opt = Warm(learning_rate=0.1, beta1=0.5)
    assert repr(opt) == ("Warm(learning_rate=0.1, global_clipnorm=None, beta1=0.5, beta2=0.999, "
                         "epsilon=1e-08, weight_decay=0.0)")
    with pytest.raises(TypeError, match=r"Warm \(in Adam.__init__\): unknown argument lr=0.1; "
                                        r"write learning_rate="):
        Warm(lr=0.1)
