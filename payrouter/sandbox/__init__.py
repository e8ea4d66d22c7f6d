"""The local sandbox: dev chain, test upstream and router in one command (``payrouter dev``)."""
