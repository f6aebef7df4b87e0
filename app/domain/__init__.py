"""Pure domain: names, addresses, specs, statuses and the reconcile planner (stdlib only)."""
