"""Parameter sets shared by several test modules."""

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
