"""HTTP edges every service shares: typed dependencies, If-Match, RFC 9457 problem responses."""
