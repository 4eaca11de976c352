"""The region table: coordinates with the country and decision they must get.

Used by ``tests/privacy/test_region.py`` (every row must be right) and ``earmark bench gate``
(region table accuracy). Expected values are the facts on the ground under the default
policy, not what the code happens to return: capitals and border towns, enclaves and
micro-states, islands and outermost regions, and positions at sea. ``country`` None means
open sea; a micro-state inside a blocked state (Monaco, the Vatican) is blocked by the
border margin even though it is not in the blocked set.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegionCase:
    name: str
    lat: float
    lon: float
    country: str | None
    blocked: bool
    kind: str  # city | border | enclave | microstate | island | sea
    # Where the true border is closer than the 1:50m map's error, the map may name the
    # neighbour: that answer is accepted for ``country`` (never for ``blocked``).
    also: str | None = None

    def country_ok(self, country: str | None) -> bool:
        return country == self.country or (self.also is not None and country == self.also)


CASES: tuple[RegionCase, ...] = (
    # micro-states and enclaves
    RegionCase("Vaduz", 47.1410, 9.5209, "LI", True, "microstate"),
    RegionCase("Valletta", 35.8989, 14.5146, "MT", True, "microstate"),
    RegionCase("Monaco-Ville", 43.7311, 7.4197, "MC", True, "microstate"),
    RegionCase("Monte Carlo", 43.7394, 7.4282, "MC", True, "microstate"),
    RegionCase("Vatican City", 41.9022, 12.4539, "VA", True, "microstate"),
    RegionCase("San Marino", 43.9356, 12.4473, "SM", False, "microstate"),
    RegionCase("Andorra la Vella", 42.5063, 1.5218, "AD", False, "microstate"),
    RegionCase("Büsingen am Hochrhein", 47.6969, 8.6908, "DE", True, "enclave"),
    RegionCase("Llívia", 42.4637, 1.9813, "ES", True, "enclave"),
    RegionCase("Gibraltar", 36.1408, -5.3536, "GI", True, "enclave"),
    RegionCase("Campione d'Italia", 45.9690, 8.9711, "IT", True, "enclave"),
    RegionCase("Ceuta", 35.8894, -5.3213, "ES", True, "enclave"),
    RegionCase("Melilla", 35.2923, -2.9381, "ES", True, "enclave"),
    # borders
    RegionCase("Zurich", 47.3769, 8.5417, "CH", False, "city"),
    RegionCase("Geneva", 46.2044, 6.1432, "CH", False, "border"),
    RegionCase("Basel", 47.5596, 7.5886, "CH", True, "border"),  # 2 km from DE and FR
    RegionCase("Kreuzlingen", 47.6458, 9.1780, "CH", True, "border"),  # joined to Konstanz
    RegionCase("Schaffhausen", 47.6960, 8.6340, "CH", False, "border"),
    RegionCase("Lugano", 46.0037, 8.9511, "CH", False, "border"),
    RegionCase("La Línea de la Concepción", 36.1681, -5.3478, "ES", True, "border"),
    RegionCase("Strasbourg", 48.5734, 7.7521, "FR", True, "border"),
    RegionCase("Kehl", 48.5726, 7.8156, "DE", True, "border"),
    RegionCase("Baarle-Nassau", 51.4430, 4.9296, "NL", True, "border"),
    RegionCase("Narva", 59.3772, 28.1903, "EE", True, "border", also="RU"),
    RegionCase("Tijuana", 32.5149, -117.0382, "MX", False, "border"),
    RegionCase("San Diego", 32.7157, -117.1611, "US", False, "border"),
    RegionCase("Kaliningrad", 54.7104, 20.4522, "RU", False, "border"),
    RegionCase("Edirne", 41.6771, 26.5557, "TR", False, "border"),
    RegionCase("Pristina", 42.6629, 21.1655, "XK", False, "city"),
    # capitals and cities
    RegionCase("London", 51.5074, -0.1278, "GB", True, "city"),
    RegionCase("Belfast", 54.5973, -5.9301, "GB", True, "city"),
    RegionCase("Dublin", 53.3498, -6.2603, "IE", True, "city"),
    RegionCase("Oslo", 59.9139, 10.7522, "NO", True, "city"),
    RegionCase("Reykjavík", 64.1466, -21.9426, "IS", True, "city"),
    RegionCase("Rome", 41.8933, 12.4829, "IT", True, "city"),
    RegionCase("New York", 40.7128, -74.0060, "US", False, "city"),
    RegionCase("Toronto", 43.6532, -79.3832, "CA", False, "city"),
    RegionCase("Tokyo", 35.6762, 139.6503, "JP", False, "city"),
    RegionCase("Seoul", 37.5665, 126.9780, "KR", False, "city"),
    RegionCase("Istanbul", 41.0082, 28.9784, "TR", False, "city"),
    RegionCase("Singapore", 1.2903, 103.8519, "SG", False, "city"),
    # islands and outermost regions
    RegionCase("Mariehamn, Åland", 60.0973, 19.9348, "AX", True, "island"),
    RegionCase("Saint-Denis, Réunion", -20.8821, 55.4507, "FR", True, "island"),
    RegionCase("Cayenne, French Guiana", 4.9224, -52.3135, "FR", True, "island"),
    RegionCase("Pointe-à-Pitre, Guadeloupe", 16.2411, -61.5331, "FR", True, "island"),
    RegionCase("Las Palmas, Canary Islands", 28.1235, -15.4363, "ES", True, "island"),
    RegionCase("Ponta Delgada, Azores", 37.7412, -25.6756, "PT", True, "island"),
    RegionCase("Funchal, Madeira", 32.6669, -16.9241, "PT", True, "island"),
    RegionCase("St Helier, Jersey", 49.1860, -2.1049, "JE", True, "island"),
    RegionCase("Douglas, Isle of Man", 54.1523, -4.4861, "IM", True, "island"),
    RegionCase("North Nicosia, Cyprus", 35.1900, 33.3600, "CY", True, "island"),
    RegionCase("Nuuk, Greenland", 64.1814, -51.6941, "GL", False, "island"),
    RegionCase("Tórshavn, Faroe Islands", 62.0079, -6.7900, "FO", False, "island"),
    RegionCase("Honolulu", 21.3069, -157.8583, "US", False, "island"),
    # at sea
    RegionCase("Mid-Atlantic", 40.0, -40.0, None, True, "sea"),
    RegionCase("Mid-Pacific", 0.0, -150.0, None, True, "sea"),
    RegionCase("Strait of Dover off Cap Gris-Nez", 50.95, 1.50, "FR", True, "sea"),
    RegionCase("Off Nice", 43.60, 7.30, "FR", True, "sea"),
    RegionCase("Off Malta", 35.75, 14.70, "MT", True, "sea"),
    RegionCase("Åland Sea off Grisslehamn", 60.00, 19.00, "SE", True, "sea"),
    RegionCase("Åland Sea off Eckerö", 60.20, 19.45, "AX", True, "sea"),
    RegionCase("Off New Jersey", 40.30, -73.85, "US", False, "sea"),
    RegionCase("Off Key West", 24.45, -81.85, "US", False, "sea"),
)
