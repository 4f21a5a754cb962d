"""Parsing of string options into enums, with errors that list the allowed values."""

__all__ = ["parse_option"]


def parse_option(enum_type, value, what):
    """
    Convert ``value`` to a member of ``enum_type``.

    :param type enum_type: a ``str``-valued :class:`enum.Enum`.
    :param value: a member or its string value.
    :param str what: the option's name for the error message, e.g. ``"beta schedule"``.
    :raises ValueError: naming ``value`` and the allowed values.
    """
    if isinstance(value, enum_type):
        return value
    allowed = [member.value for member in enum_type]
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}: use one of {', '.join(allowed)}")
    return enum_type(value)
