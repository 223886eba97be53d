"""Real processes where a process boundary is what is tested: gateways, workers and signals,
raw sockets, redis-server in every role (master, replica, sentinel) and its chaos, nginx,
Chromium, and the load profiles."""
