"""Device and gateway block the same jurisdictions: one list in the wire schema, one policy."""

from earmark.device.policy import load_policy
from earmark.wire import BLOCKED_REGIONS


def test_the_gateway_rejects_exactly_what_the_default_device_policy_blocks() -> None:
    region = load_policy().region
    territories = {cc for cc, state in region.territories.items() if state in region.blocked}
    assert BLOCKED_REGIONS == region.blocked | territories
