"""A discrete-event simulator of one voxmesh pool, used to compare autoscaling policies.

Modules, in the order data flows through them:

- ``calibration``: per-instance capacity and timings (measured, or documented defaults);
- ``workload``: stream arrivals (synthetic bursts, the Azure trace, a diurnal replay);
- ``availability``: preemptible capacity over time (SkyPilot-like synthetic, or a real trace);
- ``control``: the contract between the mesh and the controllers it compares;
- ``ours`` / ``baselines``: our policy and the usual autoscalers as controllers;
- ``mesh`` / ``engine``: the model of instances, router queue and preemption, and its loop;
- ``oracle``: the no-delay, perfect-packing lower bound;
- ``record`` / ``report`` / ``plot`` / ``scenarios`` / ``runner``: figures, scenarios, output.
"""
