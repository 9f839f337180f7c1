"""The agent: registration, one poll loop per server node, slots, task reporting, drain."""
