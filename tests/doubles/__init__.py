"""Protocol-faithful test doubles of external HTTP APIs (Consul, Nomad).

These are doubles for tests, not the real agents: each module says which API
version it follows and what it leaves out.
"""
