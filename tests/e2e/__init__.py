"""End-to-end tests: the inspector inline between a client and a server namespace."""
