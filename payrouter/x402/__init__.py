"""x402 protocol support: wire formats, verification rules and the ASGI payment gate."""
