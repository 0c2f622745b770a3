"""What a stage shows in the UI: its metadata, as a person reads it."""


def readable(metadata: dict, digits: int = 4) -> dict:
    """Metadata as a person reads it: floats to ``digits`` significant digits (a multiplier of
    176.2, not 176.1622637334007), NaN as no value."""
    import math

    def one(value):
        if isinstance(value, float):
            return None if math.isnan(value) else float(f"{value:.{digits}g}")
        return value

    return {key: one(value) for key, value in metadata.items()}
