"""The IP address reduced to a country at ingestion, then dropped (docs/privacy.md: minimisation).

An offline database (``geoip2fast`` and the data it bundles, a few MB, loaded on first use in about
0.1 s): no lookup leaves the machine, and the address itself is never stored. A private, malformed or
unknown address gives None. The bundled data covers IPv4; IPv6 addresses give None.

>>> country_of("8.8.8.8"), country_of("10.0.0.1"), country_of("1.2.3"), country_of("::1")
('US', None, None, None)
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _database() -> Any:
    from geoip2fast import GeoIP2Fast  # imported on first use: most events carry no IP

    return GeoIP2Fast(verbose=False)


def country_of(ip: str) -> str | None:
    """ISO 3166-1 alpha-2 country of a public IPv4 address, else None."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if address.version != 4 or not address.is_global:
        return None
    code = _database().lookup(str(address)).country_code
    return code if isinstance(code, str) and len(code) == 2 and code.isalpha() else None
