"""lunar: segment photos of the Moon's surface into sky, small rocks, large rocks and ground."""

__version__ = "0.1.0"
