"""glance-cache-agent: keep OpenStack Glance's sqlite image cache healthy and visible."""

__version__ = "0.1.0"
