"""The axis values the tests run, shared by the test modules. `test_cases_cover_every_axis_value`
(test_presets.py) checks them against `miras_lite.spec`'s own constants, so a value added to the library
cannot escape the reference tests."""

MEMORIES = ("linear", "mlp")
RETENTIONS = ("none", "l2", "lq", "kl", "elastic")
OPTIMIZERS = ("gd", "momentum", "implicit")
GRAD_POINTS = ("previous", "retained")

# one entry per attentional bias (and Huber mode), with parameters that put errors on both sides of δ
BIASES = [
    dict(bias="dot"),
    dict(bias="l2"),
    dict(bias="lp", p=3.0),
    dict(bias="huber", huber_mode="coord", delta=0.4),
    dict(bias="huber", huber_mode="norm", delta=1.0),
    dict(bias="huber", huber_mode="mixture", delta=1.0),
    dict(bias="robust", robust_delta=0.5),
]
# the same, named, as the exact-recurrence reference tests run them
BIAS_CASES = {
    "dot": dict(bias="dot"),
    "l2": dict(bias="l2"),
    "lp": dict(bias="lp", p=3.0),
    "huber_coord": dict(bias="huber", huber_mode="coord", delta=0.5),
    "huber_norm": dict(bias="huber", huber_mode="norm", delta=1.0),
    "huber_mixture": dict(bias="huber", huber_mode="mixture", delta=1.0),
    "robust": dict(bias="robust", robust_delta=0.5),
}
