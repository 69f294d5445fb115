"""I/O: the transport (the only module with sockets), reading file headers,
converting data sets, finding files."""
