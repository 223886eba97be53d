"""The gateway in-process: `build_app` served on a port of this process (or its parts on
real sockets), in front of the suite's simulators where a backend is needed."""
