"""The one argument check shared across the package: an integer with a lower bound."""


def check_int(name, value, minimum=1):
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int (not a bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
