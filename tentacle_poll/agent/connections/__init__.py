"""The agent's connections and trust: the HTTP client and its errors, proxies, retries,
listening mode, registration, server nodes and their pins, certificate rotation, leaving."""
