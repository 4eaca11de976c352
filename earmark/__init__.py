"""earmark: on-device voice signal extraction, done the privacy-preserving way.

Audio becomes text, text becomes coarse IAB interest tags, and a privacy gate (consent,
region, sensitive topics) decides what, if anything, leaves the device. Only small
`SignalBatch` messages (see :mod:`earmark.wire`) ever cross the network.
"""

from earmark.errors import EarmarkError

__version__ = "0.1.0"
__all__ = ["EarmarkError", "__version__"]
